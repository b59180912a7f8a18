"""The load generator: multipart uploads over raw keep-alive HTTP/1.1, in a process of its own.

    python -m bench.load send --port 8000 --file photo.jpg --count 1000 --concurrency 16 --max-seconds 10
    python -m bench.load sink --port 8001      # answers every request at once (the generator's ceiling)

A Python HTTP client (httpx) spends about a millisecond of CPU per request, which on two cores would
take a good share of what the server under test needs. This one builds the request bytes once and
then only writes them and reads the answer (status line, Content-Length, body): tens of microseconds
a request. `send` prints one JSON object: elapsed time, per-request latencies, status counts, the
task ids the API answered with, and the generator's own CPU time, so a run can show that the
generator was not the bottleneck. Only 127.0.0.1 is ever a target; the run is bounded by `--count`
and `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import re
import resource
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
T = TypeVar("T")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)
_TASK_ID = re.compile(rb'"task_id":\s*(\d+)')


def multipart_request(
    path: str, port: int, data: bytes, *, filename: str = "bench.jpg", fields: dict[str, str] | None = None
) -> bytes:
    """One complete POST of `data` in the form field `file` (plus text `fields`), ready to write."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (fields or {}).items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    body = b"".join(parts)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: application/json\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    task_ids: list[int] = field(default_factory=list)
    started_wall: float = 0.0
    elapsed: float = 0.0


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = _CONTENT_LENGTH.search(head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return status, body, _CONNECTION_CLOSE.search(head) is not None


async def send(
    port: int, request: bytes, *, count: int, concurrency: int, max_seconds: float, warmup: int
) -> Result:
    result = Result()

    async def connection(indexes: Iterator[int], *, measured: bool, deadline: float) -> None:
        reader = writer = None
        try:
            for _ in indexes:
                if time.monotonic() > deadline:
                    return
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                assert reader is not None
                started = time.perf_counter()
                try:
                    writer.write(request)
                    status, body, closing = await _read_answer(reader)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    if measured:
                        result.transport_errors[type(exc).__name__] += 1
                    writer.close()
                    reader = writer = None
                    continue
                if measured:
                    result.latencies.append(time.perf_counter() - started)
                    result.statuses[status] += 1
                    match = _TASK_ID.search(body)
                    if match:
                        result.task_ids.append(int(match.group(1)))
                if closing:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    if warmup:
        warm = iter(range(warmup))
        deadline = time.monotonic() + max_seconds
        await asyncio.gather(
            *(connection(warm, measured=False, deadline=deadline) for _ in range(min(concurrency, warmup)))
        )
    measured = iter(range(count))
    deadline = time.monotonic() + max_seconds
    result.started_wall = time.time()
    started = time.perf_counter()
    await asyncio.gather(
        *(connection(measured, measured=True, deadline=deadline) for _ in range(concurrency))
    )
    result.elapsed = time.perf_counter() - started
    return result


async def sink(port: int) -> None:
    """Read each request whole and answer 200 at once: what the generator can push at most."""
    answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"task_id":1}'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                match = _CONTENT_LENGTH.search(head)
                if match:
                    await reader.readexactly(int(match.group(1)))
                writer.write(answer)
        writer.close()

    server = await asyncio.start_server(handle, HOST, port, backlog=1024)
    async with server:
        await server.serve_forever()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed (uvicorn[standard] brings it): the generator's own overhead, smaller."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sending = commands.add_parser("send")
    sending.add_argument("--port", type=int, required=True)
    sending.add_argument("--path", default="/upload")
    sending.add_argument("--file", type=Path, required=True)
    sending.add_argument("--field", action="append", default=[], help="NAME=VALUE text field")
    sending.add_argument("--count", type=int, required=True)
    sending.add_argument("--concurrency", type=int, required=True)
    sending.add_argument("--max-seconds", type=float, default=30.0)
    sending.add_argument("--warmup", type=int, default=0)
    sinking = commands.add_parser("sink")
    sinking.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    if args.command == "sink":
        with contextlib.suppress(KeyboardInterrupt):
            _run(sink(args.port))
        return 0
    fields = dict(item.split("=", 1) for item in args.field)
    request = multipart_request(args.path, args.port, args.file.read_bytes(), fields=fields)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    result = _run(
        send(
            args.port,
            request,
            count=args.count,
            concurrency=args.concurrency,
            max_seconds=args.max_seconds,
            warmup=args.warmup,
        )
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    json.dump(
        {
            "elapsed": result.elapsed,
            "started_wall": result.started_wall,
            "latencies": result.latencies,
            "statuses": {str(status): n for status, n in result.statuses.items()},
            "transport_errors": dict(result.transport_errors),
            "task_ids": result.task_ids,
            "cpu_seconds": cpu,
            "request_bytes": len(request),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
