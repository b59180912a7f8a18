"""Uploading many files at once, and following their tasks to `done` or `failed`.

- Files are streamed from disk in httpx's 64 KiB chunks (never read whole into memory); each
  chunk read is reported to the progress display, which is how it shows bytes sent.
- At most `concurrency` requests are in the air at once: uploads and status polls share the limit,
  so following a thousand tasks never opens a thousand connections.
- Every upload carries a fresh `Idempotency-Key`, so one retried after a 503 (database down) or a
  dropped connection returns the task the first try created instead of a second one.
- A 429 (the API key's uploads_per_minute or max_pending) is waited out as its Retry-After says,
  for up to RATE_LIMITED_SECONDS a file: the server refused it before reading the file.
- Following a task polls `/status/{id}` with a growing interval (0.2 s up to 2 s); a passing
  failure while polling (503, a dropped connection) is retried until the wait's deadline.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx

from client.connection import describe, unreachable
from client.progress import Progress, human_bytes

UPLOAD_ATTEMPTS = 3
RETRY_SECONDS = 1.0
# How long one file may wait on its API key's limits (429 with Retry-After) before it is refused.
RATE_LIMITED_SECONDS = 600.0
FIRST_POLL_SECONDS = 0.2
LONGEST_POLL_SECONDS = 2.0
FINAL = ("done", "failed")
# What a result's `status` may be besides the server's task statuses.
ACCEPTED = "accepted"  # uploaded; not followed (no --wait)
REFUSED = "refused"  # the server said no (4xx), or could not be reached
TIMED_OUT = "timed out"  # --wait gave up before the task finished


@dataclass
class UploadResult:
    file: str
    task_id: int | None
    status: str
    processed_url: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UploadOptions:
    fields: dict[str, str]  # preset, ops, outputs, focus: passed through as form text fields
    wait: bool
    wait_seconds: float
    concurrency: int


@dataclass
class _Meter:
    """How much of one attempt's file httpx has read to send."""

    size: int = 0
    sent: int = 0

    @property
    def started(self) -> bool:
        return self.sent > 0

    @property
    def complete(self) -> bool:
        return self.sent >= self.size


class _CountingFile:
    """A file opened for reading that reports every chunk read (httpx reads it as it sends)."""

    def __init__(self, file: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._file = file
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._on_read(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


class Uploader:
    def __init__(self, http: httpx.AsyncClient, options: UploadOptions, progress: Progress) -> None:
        self._http = http
        self._options = options
        self._progress = progress
        self._slots = asyncio.Semaphore(options.concurrency)

    async def run(self, paths: Sequence[Path]) -> list[UploadResult]:
        if self._options.wait:
            self._progress.waiting()
        return list(await asyncio.gather(*(self._one(key, path) for key, path in enumerate(paths))))

    async def _one(self, key: int, path: Path) -> UploadResult:
        result = await self._upload(key, path)
        if self._options.wait and result.task_id is not None:
            await self._follow(result)
        return result

    async def _upload(self, key: int, path: Path) -> UploadResult:
        idempotency_key = uuid.uuid4().hex
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        attempt = 0
        # Over the key's limits (429) the server read nothing of the file: waiting as it says is not
        # an attempt, up to a bound.
        limited_until = time.monotonic() + RATE_LIMITED_SECONDS
        while True:
            attempt += 1
            retry_after = RETRY_SECONDS * attempt
            meter = _Meter()
            try:
                async with self._slots:
                    response = await self._send(key, path, content_type, idempotency_key, meter)
            except OSError as exc:  # the file went away or cannot be read
                reason = f"cannot read {path}: {exc.strerror or exc}"
                self._progress.refused(key, path.name, reason)
                return UploadResult(str(path), None, REFUSED, error=reason)
            except httpx.HTTPError as exc:
                if meter.started and not meter.complete:
                    # The server stopped reading mid-file and closed the connection; its answer (a
                    # 413, when the file is over its size limit) is lost with the connection's reset.
                    # The same file would meet the same end: no retry.
                    reason = (
                        f"the server closed the connection after {human_bytes(meter.sent)} of "
                        f"{human_bytes(meter.size)} (is the file over its upload size limit?)"
                    )
                    self._progress.refused(key, path.name, reason)
                    return UploadResult(str(path), None, REFUSED, error=reason)
                reason = unreachable(str(self._http.base_url), exc).message
            else:
                if response.is_success:
                    task_id = int(response.json()["task_id"])
                    self._progress.uploaded(key, task_id)
                    return UploadResult(str(path), task_id, ACCEPTED)
                reason = describe(response)
                if response.status_code == 429 and time.monotonic() < limited_until:
                    attempt -= 1
                    await asyncio.sleep(_retry_after(response, RETRY_SECONDS))
                    continue
                if response.status_code != 503:
                    self._progress.refused(key, path.name, reason)
                    return UploadResult(str(path), None, REFUSED, error=reason)
                retry_after = _retry_after(response, retry_after)
            if attempt >= UPLOAD_ATTEMPTS:
                break
            await asyncio.sleep(retry_after)
        self._progress.refused(key, path.name, reason)
        return UploadResult(str(path), None, REFUSED, error=reason)

    async def _send(
        self, key: int, path: Path, content_type: str, idempotency_key: str, meter: _Meter
    ) -> httpx.Response:
        with path.open("rb") as raw:
            meter.size = os.fstat(raw.fileno()).st_size
            self._progress.start(key, path.name, meter.size)

            def on_read(count: int) -> None:
                meter.sent += count
                self._progress.advance(key, count)

            return await self._http.post(
                "/upload",
                files={"file": (path.name, cast("BinaryIO", _CountingFile(raw, on_read)), content_type)},
                data=self._options.fields,
                headers={"Idempotency-Key": idempotency_key, "Accept": "application/json"},
            )

    async def _follow(self, result: UploadResult) -> None:
        assert result.task_id is not None
        deadline = time.monotonic() + self._options.wait_seconds
        delay = FIRST_POLL_SECONDS
        status, error = result.status, None
        while True:
            try:
                async with self._slots:
                    response = await self._http.get(f"/status/{result.task_id}")
            except httpx.HTTPError as exc:
                error = unreachable(str(self._http.base_url), exc).message
            else:
                if response.is_success:
                    body = response.json()
                    status, error = body["status"], body.get("error")
                    if status in FINAL:
                        result.status, result.error = status, error
                        if body.get("processed_url"):
                            result.processed_url = str(self._http.base_url.join(body["processed_url"]))
                        break
                elif response.status_code != 503:  # gone (deleted) or refused: waiting will not help
                    result.status, result.error = REFUSED, describe(response)
                    break
                else:
                    error = describe(response)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result.status = TIMED_OUT
                result.error = f"still {status} after {self._options.wait_seconds:g} s" + (
                    f" ({error})" if error else ""
                )
                break
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, LONGEST_POLL_SECONDS)
        self._progress.finished(Path(result.file).name, result.task_id, result.status, result.error)


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(float(response.headers.get("retry-after", default)), 30.0)
    except ValueError:
        return default


async def upload_files(
    http: httpx.AsyncClient, paths: Sequence[Path], options: UploadOptions, progress: Progress
) -> list[UploadResult]:
    """Upload `paths` (at most `options.concurrency` at a time); results in the order given."""
    try:
        return await Uploader(http, options, progress).run(paths)
    finally:
        progress.close()
