"""Answering with a stored file, whichever backend holds it.

A local file goes out as a FileResponse (sendfile, ranges, validators). An object is streamed chunk
by chunk as it is read from NATS, never held whole, with its size as Content-Length: a client cut
off by a failure mid-stream sees a short body, not a complete looking one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse, StreamingResponse
from starlette.responses import Response

from core.storage import StoredObject


def image_cache_control(caller: str | None, *, max_age: int) -> str:
    """`public` for an open API; with API keys on (`caller` is a key's fingerprint) an image is one
    key's, and a shared cache (a CDN, a company proxy) cannot tell keys apart: only the client's
    own cache may keep it."""
    return f"{'public' if caller is None else 'private'}, max-age={max_age}"


def stored_file_response(found: Path | StoredObject, *, media_type: str, cache_control: str) -> Response:
    headers = {"Cache-Control": cache_control}
    if isinstance(found, Path):
        return FileResponse(found, media_type=media_type, headers=headers)
    headers["Content-Length"] = str(found.size)
    return StreamingResponse(found.chunks, media_type=media_type, headers=headers)
