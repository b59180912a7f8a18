"""A small JSON request body, read within a size and a nesting depth before anything parses it.

FastAPI's own body parsing reads a body of any size and hands deep nesting to `json.loads` (a
RecursionError: a 500). The control endpoints (reprocess, bulk jobs) take a few hundred bytes of
JSON, so they read it here and validate it with their Pydantic model.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError

from core.json_fields import MAX_JSON_DEPTH, nesting_depth
from core.processing.operations import first_error

# Room for the largest `ops` or `outputs` field (8 KiB, core.json_fields) and the rest of a body.
MAX_BODY_BYTES = 16 * 1024
BODY_TOO_LARGE = f"The request body is larger than {MAX_BODY_BYTES:,} bytes."
BODY_NOT_JSON = "The request body must be a JSON object (Content-Type: application/json)."
BODY_TOO_DEEP = f"The request body is nested more than {MAX_JSON_DEPTH} levels deep."
BODY_HAS_NUL = "The request body contains a NUL character (\\u0000), which cannot be stored."
BODY_INVALID = "The request body is invalid: {reason}"

M = TypeVar("M", bound=BaseModel)


async def json_body(request: Request, model: type[M]) -> M:
    """The body as `model` (an empty body is `{}`): 413 when too large, 422 saying why otherwise."""
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > MAX_BODY_BYTES:
            raise HTTPException(status_code=413, detail=BODY_TOO_LARGE)
    raw = bytes(received).decode("utf-8", errors="replace").strip() or "{}"
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        raise HTTPException(status_code=422, detail=BODY_TOO_DEEP)
    try:
        parsed: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPException(status_code=422, detail=BODY_NOT_JSON) from None
    if not isinstance(parsed, dict):
        raise HTTPException(status_code=422, detail=BODY_NOT_JSON)
    # PostgreSQL's jsonb refuses \u0000 in any string, and job filters are stored as given.
    if "\\u0000" in json.dumps(parsed):  # json writes a NUL as \u0000 (and a false alarm costs a 422)
        raise HTTPException(status_code=422, detail=BODY_HAS_NUL)
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        raise HTTPException(status_code=422, detail=BODY_INVALID.format(reason=first_error(exc))) from None
