"""The Jinja2 environment of the HTML pages (autoescaping on for every template)."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates
from starlette.requests import Request

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.autoescape = True


def wants_html(request: Request) -> bool:
    """A browser (its form posts send Accept: text/html) rather than an API client."""
    return "text/html" in request.headers.get("accept", "")
