"""The client's HTTP side: one httpx client per run, and the server's refusals put into words."""

from __future__ import annotations

from typing import Any

import httpx

# Per network operation (connect, each read or write), not per request: a large upload on a slow
# link takes as long as it takes, as long as bytes keep moving.
NETWORK_TIMEOUT_SECONDS = 60.0


class ApiError(Exception):
    """The server refused a request or could not be reached; the message is meant for people."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def make_client(base_url: str, api_key: str | None, *, connections: int) -> httpx.AsyncClient:
    headers = {"X-API-Key": api_key} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=NETWORK_TIMEOUT_SECONDS,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def describe(response: httpx.Response) -> str:
    """The server's own words for a refusal: `detail` as text, or each validation error's message."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        # FastAPI's 422: [{"loc": [...], "msg": "..."}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", []) if part != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        if parts:
            return "; ".join(parts)
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def unreachable(base_url: str, exc: httpx.HTTPError) -> ApiError:
    return ApiError(f"cannot reach the server at {base_url}: {exc or type(exc).__name__}")


def checked(response: httpx.Response) -> httpx.Response:
    """The response itself when it succeeded; ApiError with the server's words otherwise."""
    if not response.is_success:
        raise ApiError(describe(response), status_code=response.status_code)
    return response
