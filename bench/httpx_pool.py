"""httpx's AsyncClient at 64 connections, without us: the c64 cliff of issue 20 reproduced on a bare endpoint.

    .venv/bin/python -m bench.httpx_pool [--reps 3] [--count 600] [--url http://HOST:PORT/upload]

Without `--url` it starts a bare ASGI endpoint (`app` below: reads the whole body, answers a 176-byte
JSON at once) under plain uvicorn with a 30 s keep-alive, so nothing on the server's side (no work,
no close) is involved. It then posts the same 40 KB JPEG as bench.clients, `--count` times at c16 and
c64, three ways, in turns:

- `stock`: one AsyncClient with as many connections as tasks (what bench.clients and most users do);
- `reserving`: the same client, whose pool does not offer a connection it has already handed to a
  request that has not started on it yet, and checks idle connections once per pass instead of once
  per idle connection (the fixes proposed in encode/httpcore#1111 and #1035, and merged in
  pydantic/httpx2#1075); a stand-in written here, for one origin, to measure the difference;
- `per-task`: one AsyncClient of one connection per task (what httpx's public API allows today).

Per way: uploads/s, p50/p99, the client's CPU per request (getrusage) and the pool's passes per
request (2 when each request is placed at once: one pass when it arrives, one when its response
closes; each further pass is a request that found its connection taken and queued again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpcore
import httpx

from bench import report
from bench.images import photo_jpeg
from devstack.servers import free_port
from devstack.stack import PROJECT_ROOT

WAYS = ("stock", "reserving", "per-task")
ANSWER = (
    b'{"task_id":1,"filename":"bench.jpg","message":"Upload accepted; the image is queued for processing.",'
    b'"status_url":"/status/1","result_url":"/result/1","ignored_fields":[]}'
)

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """The bare endpoint: the whole body read, then one answer shaped like ours (no work at all)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


class CountingPool(httpcore.AsyncConnectionPool):
    """httpcore's own pool, counting its assignment passes."""

    passes = 0

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        CountingPool.passes += 1
        return super()._assign_requests_to_connections()


class ReservingPool(CountingPool):
    """A connection handed to a waiting request stays IDLE until that request's task runs; httpcore
    offers it again meanwhile, so under a busy event loop several requests get the same connection,
    all but one raise ConnectionNotAvailable inside the pool and queue again, each time through a
    pass that calls is_idle() once per connection for every idle connection. This pass skips
    connections already handed out and looks at each connection once. One origin only, and no
    surplus-idle closing (keep-alive connections = connections here), which is all this bench needs."""

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        CountingPool.passes += 1
        closing: list[httpcore.AsyncConnectionInterface] = []
        for connection in list(self._connections):
            if connection.is_closed():
                self._connections.remove(connection)
            elif connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
        taken = {id(request.connection) for request in self._requests if request.connection is not None}
        for request in self._requests:
            if not request.is_queued():
                continue
            origin = request.request.url.origin
            free = (
                c
                for c in self._connections
                if id(c) not in taken and c.can_handle_request(origin) and c.is_available()
            )
            chosen: httpcore.AsyncConnectionInterface | None = next(free, None)
            if chosen is None and len(self._connections) < self._max_connections:
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            if chosen is not None:
                request.assign_to_connection(chosen)
                taken.add(id(chosen))
        return closing


def _client(connections: int, pool: type[CountingPool]) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = httpx.AsyncHTTPTransport(limits=limits)
    # httpx builds httpcore's pool itself; the subclass only changes how a pass assigns.
    transport._pool.__class__ = pool
    return httpx.AsyncClient(transport=transport, timeout=60.0)


async def _post_all(way: str, url: str, data: bytes, count: int, concurrency: int) -> list[float]:
    pool = ReservingPool if way == "reserving" else CountingPool
    clients = (
        [_client(1, pool) for _ in range(concurrency)] if way == "per-task" else [_client(concurrency, pool)]
    )
    latencies: list[float] = []
    indexes: Iterator[int] = iter(range(count))

    async def task(client: httpx.AsyncClient) -> None:
        for index in indexes:
            started = time.perf_counter()
            response = await client.post(
                url,
                files={"file": (f"bench-{index:06d}.jpg", data, "image/jpeg")},
                headers={"accept": "application/json"},
            )
            response.raise_for_status()
            response.json()
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(task(clients[n % len(clients)]) for n in range(concurrency)))
    finally:
        for client in clients:
            await client.aclose()
    return latencies


def measure(way: str, url: str, data: bytes, count: int, concurrency: int) -> dict[str, Any]:
    CountingPool.passes = 0
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    latencies = asyncio.run(_post_all(way, url, data, count, concurrency))
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {
        "way": way,
        "concurrency": concurrency,
        "rate": count / elapsed,
        "p50_ms": report.percentile(latencies, 0.5) * 1000,
        "p99_ms": report.percentile(latencies, 0.99) * 1000,
        "client_cpu_ms": cpu * 1000 / count,
        "passes": CountingPool.passes / count,
        "load_average": os.getloadavg()[0],
    }


@contextlib.contextmanager
def bare_endpoint() -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.httpx_pool:app", "--port", str(port)]
    command += ["--timeout-keep-alive", "30", "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"x")
            with contextlib.suppress(OSError), urllib.request.urlopen(probe, timeout=2):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the bare endpoint did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/upload"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="post here instead of the bare endpoint (e.g. our /upload)")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--concurrency", type=int, action="append", help="default: 16 and 64")
    parser.add_argument("--way", choices=WAYS, action="append", help="default: all three")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    data = photo_jpeg(600, 450)
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(bare_endpoint())
        for _ in range(args.reps):
            for concurrency in args.concurrency or (16, 64):
                for way in args.way or WAYS:
                    run = measure(way, url, data, args.count, concurrency)
                    runs.append(run)
                    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()}))
    print("| way | c | uploads/s | p50 ms | p99 ms | client CPU ms/request | pool passes/request | load |")
    print("|---|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency or (16, 64):
        for way in args.way or WAYS:
            mine = [r for r in runs if r["way"] == way and r["concurrency"] == concurrency]
            keys = ("rate", "p50_ms", "p99_ms", "client_cpu_ms", "passes", "load_average")
            rate, p50, p99, cpu, passes, load = (statistics.median(r[k] for r in mine) for k in keys)
            cells = f"{rate:.0f} | {p50:.0f} | {p99:.0f} | {cpu:.2f} | {passes:.1f} | {load:.1f}"
            print(f"| {way} | {concurrency} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
