"""Answering with a stored file, whichever backend holds it.

A local file goes out as a FileResponse (sendfile, ranges, validators). An object is streamed chunk
by chunk as it is read from its store, never held whole, with its size as Content-Length: a client
cut off by a failure mid-stream sees a short body, not a complete looking one. Objects answer like
files do: an ETag, `Accept-Ranges: bytes`, and a single `Range` (with `If-Range`) as 206, one
that cannot be met as 416, a malformed one as 400; several ranges get the whole file (RFC 9110
allows it). HEAD is GET without the body (api/head_requests.py).

With S3_PRESIGNED_DOWNLOADS on (s3 backend) the answer is a 302 to a presigned GET of the object,
so the image's bytes never pass through the API.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC
from email.utils import format_datetime
from pathlib import Path

from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.requests import Request
from starlette.responses import Response

from config import Settings
from core.storage import Area, Storage, StoredObject

MALFORMED_RANGE = "Malformed range header."
RANGE_NOT_SATISFIABLE = "Range not satisfiable."
_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def image_cache_control(caller: str | None, *, max_age: int) -> str:
    """`public` for an open API; with API keys on (`caller` is a key's fingerprint) an image is one
    key's, and a shared cache (a CDN, a company proxy) cannot tell keys apart: only the client's
    own cache may keep it."""
    return f"{'public' if caller is None else 'private'}, max-age={max_age}"


async def stored_file_answer(
    storage: Storage,
    settings: Settings,
    area: Area,
    name: str,
    found: Path | StoredObject,
    *,
    request: Request,
    media_type: str,
    cache_control: str,
) -> Response:
    """The 302 to a presigned GET where the settings ask for one and the backend makes them, else
    the file itself."""
    if settings.s3_presigned_downloads:
        url = await storage.download_url(
            area, name, expires_seconds=settings.s3_presigned_expires_seconds, content_type=media_type
        )
        if url is not None:
            # The URL expires: a cache must not keep the redirect beyond this request.
            return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    return stored_file_response(found, media_type=media_type, cache_control=cache_control, request=request)


def stored_file_response(
    found: Path | StoredObject, *, media_type: str, cache_control: str, request: Request
) -> Response:
    headers = {"Cache-Control": cache_control}
    if isinstance(found, Path):
        return FileResponse(found, media_type=media_type, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    if found.etag:
        headers["ETag"] = found.etag
    if found.last_modified is not None:
        headers["Last-Modified"] = format_datetime(found.last_modified.astimezone(UTC), usegmt=True)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is not None and (if_range is None or if_range in (found.etag, headers.get("Last-Modified"))):
        return _partial(found, wanted, media_type, headers)
    headers["Content-Length"] = str(found.size)
    return StreamingResponse(found.chunks, media_type=media_type, headers=headers)


def _partial(found: StoredObject, wanted: str, media_type: str, headers: dict[str, str]) -> Response:
    spec = wanted.strip().replace(" ", "")
    if "," in spec and spec.startswith("bytes="):  # several ranges: the whole file will do
        headers["Content-Length"] = str(found.size)
        return StreamingResponse(found.chunks, media_type=media_type, headers=headers)
    match = _SINGLE_RANGE.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "":
        return PlainTextResponse(MALFORMED_RANGE, status_code=400)
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        start, end = max(found.size - int(last), 0), found.size - 1
    else:
        start, end = int(first), min(int(last), found.size - 1) if last else found.size - 1
        if last and int(last) < start:
            return PlainTextResponse(MALFORMED_RANGE, status_code=400)
    if start >= found.size or end < start:
        return PlainTextResponse(
            RANGE_NOT_SATISFIABLE, status_code=416, headers={"Content-Range": f"bytes */{found.size}"}
        )
    length = end - start + 1
    headers["Content-Range"] = f"bytes {start}-{end}/{found.size}"
    headers["Content-Length"] = str(length)
    body = found.read(start, length) if found.read is not None else _slice(found.chunks, start, length)
    return StreamingResponse(body, status_code=206, media_type=media_type, headers=headers)


async def _slice(chunks: AsyncIterator[bytes], start: int, length: int) -> AsyncIterator[bytes]:
    """The bytes [start, start + length) of a stream that can only be read from its beginning."""
    position = 0
    async for chunk in chunks:
        chunk_end = position + len(chunk)
        if chunk_end > start:
            piece = chunk[max(start - position, 0) : start + length - position]
            if piece:
                yield piece
        position = chunk_end
        if position >= start + length:
            break
