"""Big files through the server's tus endpoint (/files/), in pieces, resuming after a failure.

A dropped connection, a timeout or a 5xx costs at most the piece under way: the client pauses
(growing), asks HEAD where the server stands, and sends from there. After MAX_STALLS failures in
a row with no byte gained it gives up. The PATCH that completes the upload answers the task's id
(`Imagequeue-Task-Id`), or the same refusal `POST /upload` would give for the file. One piece at a
time is held in memory (PIECE_BYTES).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import httpx

from client.connection import describe, unreachable

# Files from this size go resumable (`--resumable-from`), in pieces of this size.
RESUMABLE_FROM_BYTES = 8 * 1024 * 1024
PIECE_BYTES = 8 * 1024 * 1024
MAX_STALLS = 6
FIRST_PAUSE_SECONDS = 0.5
LONGEST_PAUSE_SECONDS = 10.0
TUS = {"Tus-Resumable": "1.0.0"}


class ResumableRefused(Exception):
    """The server refused the upload, or it could not be finished; the message is for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _metadata(name: str, fields: dict[str, str]) -> str:
    pairs = {"filename": name, **fields}
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in pairs.items())


def _passing(response: httpx.Response | None) -> bool:
    """A failure worth another try: no answer, a 5xx, or an offset that moved (409, a PATCH that
    the server took after all)."""
    return response is None or response.status_code >= 500 or response.status_code in (409, 423)


class _Stalls:
    def __init__(self, base_url: str) -> None:
        self.count = 0
        self.base_url = base_url
        self.reason = ""

    async def pause(self, response: httpx.Response | None, error: httpx.HTTPError | None) -> None:
        if response is not None and not _passing(response):
            raise ResumableRefused(describe(response))
        if response is not None:
            self.reason = describe(response)
        elif error is not None:
            self.reason = unreachable(self.base_url, error).message
        self.count += 1
        if self.count >= MAX_STALLS:
            raise ResumableRefused(f"gave up after {MAX_STALLS} tries without progress: {self.reason}")
        await asyncio.sleep(min(FIRST_PAUSE_SECONDS * 2 ** (self.count - 1), LONGEST_PAUSE_SECONDS))


async def _request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    content: bytes | None = None,
) -> tuple[httpx.Response | None, httpx.HTTPError | None]:
    try:
        return await http.request(method, url, headers=headers, content=content), None
    except httpx.HTTPError as exc:
        return None, exc


async def upload_resumable(
    http: httpx.AsyncClient,
    path: Path,
    fields: dict[str, str],
    idempotency_key: str,
    on_sent: Callable[[int], None],
    *,
    piece_bytes: int = PIECE_BYTES,
) -> int:
    """Upload `path` through /files/; the task's id. Raises ResumableRefused, or OSError when the
    file cannot be read."""
    with path.open("rb") as source:
        return await _upload(http, source, path.name, fields, idempotency_key, on_sent, piece_bytes)


async def _upload(
    http: httpx.AsyncClient,
    source: BinaryIO,
    name: str,
    fields: dict[str, str],
    idempotency_key: str,
    on_sent: Callable[[int], None],
    piece_bytes: int,
) -> int:
    size = os.fstat(source.fileno()).st_size
    stalls = _Stalls(str(http.base_url))
    headers = {
        **TUS,
        "Upload-Length": str(size),
        "Upload-Metadata": _metadata(name, fields),
        "Idempotency-Key": idempotency_key,
    }
    while True:
        response, error = await _request(http, "POST", "/files/", headers=headers)
        if response is not None and response.status_code == 201:
            break
        await stalls.pause(response, error)
    location = response.headers["location"]
    offset = 0
    while True:
        source.seek(offset)
        piece = source.read(piece_bytes)
        at = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}
        response, error = await _request(http, "PATCH", location, content=piece, headers=at)
        if response is not None and response.status_code == 204:
            offset = _moved(offset, int(response.headers["upload-offset"]), on_sent)
            stalls.count = 0
            if "imagequeue-task-id" in response.headers:
                return int(response.headers["imagequeue-task-id"])
            continue
        await stalls.pause(response, error)
        head, _ = await _request(http, "HEAD", location, headers=TUS)
        if head is not None and head.status_code == 200:
            if "imagequeue-task-id" in head.headers:
                return int(head.headers["imagequeue-task-id"])
            offset = _moved(offset, int(head.headers["upload-offset"]), on_sent)
        elif head is not None and not _passing(head):
            raise ResumableRefused(f"the upload is gone on the server (HTTP {head.status_code})")


def _moved(offset: int, new: int, on_sent: Callable[[int], None]) -> int:
    if new > offset:
        on_sent(new - offset)
    return new
