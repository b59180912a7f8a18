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


def stored_file_response(found: Path | StoredObject, *, media_type: str, cache_control: str) -> Response:
    headers = {"Cache-Control": cache_control}
    if isinstance(found, Path):
        return FileResponse(found, media_type=media_type, headers=headers)
    headers["Content-Length"] = str(found.size)
    return StreamingResponse(found.chunks, media_type=media_type, headers=headers)
