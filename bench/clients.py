"""Uploads from the HTTP clients people use, in a process of its own: httpx (async), requests (threads)
and aiohttp (async, when installed), one file posted `--count` times at `--concurrency`.

    python -m bench.clients --client httpx --port 8000 --file photo.jpg --count 600 --concurrency 64

bench/load.py measures the server with a generator that costs almost nothing; this measures what a
user's client sees and costs, which is what the side-by-side benchmark (bench/sidebyside.py) reports.
Each client is used the ordinary way: one pooled, keep-alive client (a `requests.Session` per thread,
as its docs advise), a multipart body built by the client from a file name and the bytes. Every upload
carries its own file name (the original design stores under the client's name). Prints one JSON
object like bench.load's, plus the TCP connections the client opened (more than `--concurrency` means
connections were closed and reopened) and the transport errors by type.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
CLIENTS = ("httpx", "requests", "aiohttp")


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    task_ids: list[int] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, started: float, status: int, body: Any) -> None:
        with self.lock:
            self.latencies.append(time.perf_counter() - started)
            self.statuses[status] += 1
            if isinstance(body, dict) and isinstance(body.get("task_id"), int):
                self.task_ids.append(body["task_id"])

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors[type(exc).__name__] += 1


def _name(index: int) -> str:
    return f"bench-{index:06d}.jpg"


async def run_httpx(url: str, data: bytes, indexes: list[int], concurrency: int, tally: Tally) -> None:
    import httpx

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            tally.connections += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        queue = iter(indexes)

        async def one_connection() -> None:
            for index in queue:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        url,
                        files={"file": (_name(index), data, "image/jpeg")},
                        headers={"accept": "application/json"},
                        extensions={"trace": trace},
                    )
                except httpx.HTTPError as exc:
                    tally.error(exc)
                    continue
                tally.answer(started, response.status_code, _json(response.content))

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))


def run_requests(url: str, data: bytes, indexes: list[int], concurrency: int, tally: Tally) -> None:
    import requests
    import urllib3.connection

    connect = urllib3.connection.HTTPConnection.connect

    def counted_connect(self: Any) -> None:
        with tally.lock:
            tally.connections += 1
        connect(self)

    urllib3.connection.HTTPConnection.connect = counted_connect  # type: ignore[method-assign]
    queue = iter(indexes)
    queue_lock = threading.Lock()

    def one_thread() -> None:
        with requests.Session() as session:
            while True:
                with queue_lock:
                    index = next(queue, None)
                if index is None:
                    return
                started = time.perf_counter()
                try:
                    response = session.post(
                        url,
                        files={"file": (_name(index), data, "image/jpeg")},
                        headers={"accept": "application/json"},
                        timeout=60,
                    )
                except requests.RequestException as exc:
                    tally.error(exc)
                    continue
                tally.answer(started, response.status_code, _json(response.content))

    threads = [threading.Thread(target=one_thread) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def run_aiohttp(url: str, data: bytes, indexes: list[int], concurrency: int, tally: Tally) -> None:
    import aiohttp

    trace = aiohttp.TraceConfig()

    async def on_create(*_: Any) -> None:
        tally.connections += 1

    trace.on_connection_create_end.append(on_create)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        queue = iter(indexes)

        async def one_connection() -> None:
            for index in queue:
                form = aiohttp.FormData()
                form.add_field("file", data, filename=_name(index), content_type="image/jpeg")
                started = time.perf_counter()
                try:
                    async with session.post(
                        url, data=form, headers={"accept": "application/json"}
                    ) as response:
                        body = await response.read()
                except aiohttp.ClientError as exc:
                    tally.error(exc)
                    continue
                tally.answer(started, response.status, _json(body))

        await asyncio.gather(*(one_connection() for _ in range(concurrency)))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def available(client: str) -> bool:
    try:
        __import__(client)
    except ImportError:
        return False
    return True


def run(client: str, url: str, data: bytes, indexes: list[int], concurrency: int, tally: Tally) -> None:
    runners: dict[str, Callable[[], Any]] = {
        "httpx": lambda: asyncio.run(run_httpx(url, data, indexes, concurrency, tally)),
        "requests": lambda: run_requests(url, data, indexes, concurrency, tally),
        "aiohttp": lambda: asyncio.run(run_aiohttp(url, data, indexes, concurrency, tally)),
    }
    runners[client]()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/upload")
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--first-index", type=int, default=0, help="file names are numbered from here")
    args = parser.parse_args()
    data = args.file.read_bytes()
    url = f"http://{HOST}:{args.port}{args.path}"
    tally = Tally()
    indexes = list(range(args.first_index, args.first_index + args.count))
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.time()
    started = time.perf_counter()
    run(args.client, url, data, indexes, args.concurrency, tally)
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    json.dump(
        {
            "client": args.client,
            "elapsed": elapsed,
            "started_wall": wall,
            "latencies": tally.latencies,
            "statuses": {str(status): n for status, n in tally.statuses.items()},
            "transport_errors": dict(tally.errors),
            "task_ids": tally.task_ids,
            "connections": tally.connections,
            "cpu_seconds": cpu,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
