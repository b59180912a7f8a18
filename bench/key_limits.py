"""Per-key limits' cost (not a test): what `core.key_limits.admit` adds to an upload.

    .venv/bin/python -m bench.key_limits [--calls 2000] [--uploads 400]

1. The statement alone, on asyncpg's pool as the API runs it, one call at a time: a key with
   `uploads_per_minute`, with `max_pending` (its count at 0 and at 500 unfinished tasks, the most
   it reads), and with both; beside a bare `SELECT 1` round trip on the same pool. Wall time per
   call (median, p99) and this process's CPU per call.
2. End to end: uploads of a 600 × 450 JPEG to one API process (no worker), 8 at once, with a key
   without limits and with one with both limits set high enough never to refuse (max_pending 500;
   each upload counts up to all the key's unfinished tasks, 0 to `--uploads` in a round, which are
   then marked done). Rounds alternate between the keys, so that a machine's drift hits both; the
   API process's CPU per upload is the figure that load on the machine moves least.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.machine import tree_cpu
from bench.stack import bench_environment
from core import key_limits
from core.api_keys import KeyPolicy, fingerprint
from core.db import DriverPool, make_driver_pool
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, start_api, stop_process, wait_until_ready
from tests import images

PLAIN_KEY = "bench-plain-key-0123456789"
LIMITED_KEY = {"key": "bench-limited-key-0123456789", "uploads_per_minute": 1_000_000, "max_pending": 500}
ROUNDS = 3


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def timed(call: Callable[[], Awaitable[object]], calls: int) -> str:
    for _ in range(min(calls, 200)):  # warm-up: connections, prepared statements
        await call()
    walls = []
    cpu_start = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu_start) / calls
    return (
        f"median {statistics.median(walls) * 1e6:6.0f} µs, p99 {percentile(walls, 0.99) * 1e6:6.0f} µs, "
        f"CPU {cpu * 1e6:4.0f} µs"
    )


async def add_unfinished(pool: DriverPool, owner: str, count: int) -> None:
    await pool.executemany(
        "INSERT INTO image_tasks (filename, content_type, size_bytes, width, height, sha256, input_name, "
        "owner, processing) VALUES ('bench.jpg', 'image/jpeg', 1, 1, 1, '', $1, $2, '{}')",
        [(secrets.token_hex(16), owner) for _ in range(count)],
    )


async def statement_costs(database_url: str, calls: int) -> None:
    pool = await make_driver_pool(database_url, max_size=4)
    try:
        print(f"{'SELECT 1 (a bare round trip)':44} {await timed(lambda: pool.fetchval('SELECT 1'), calls)}")
        # A rate high enough never to refuse: every call is an admission, as on the hot path.
        rate = KeyPolicy(f"bench-rate-{secrets.token_hex(8)}", uploads_per_minute=1_000_000)
        print(f"{'uploads_per_minute':44} {await timed(lambda: key_limits.admit(pool, rate), calls)}")
        for unfinished in (0, 500):
            pending = KeyPolicy(f"bench-pending-{secrets.token_hex(8)}", max_pending=501)
            both = KeyPolicy(
                f"bench-both-{secrets.token_hex(8)}", uploads_per_minute=1_000_000, max_pending=501
            )
            await add_unfinished(pool, fingerprint(pending.key), unfinished)
            await add_unfinished(pool, fingerprint(both.key), unfinished)
            label = f"max_pending, {unfinished} unfinished"
            print(f"{label:44} {await timed(lambda: key_limits.admit(pool, pending), calls)}")  # noqa: B023
            label = f"both, {unfinished} unfinished"
            print(f"{label:44} {await timed(lambda: key_limits.admit(pool, both), calls)}")  # noqa: B023
    finally:
        await pool.close()


async def ingest(base_url: str, key: str, uploads: int, concurrency: int = 8) -> tuple[float, float]:
    """Uploads a second, and the median upload's time."""
    data = images.jpeg(600, 450)
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(uploads):
        queue.put_nowait(index)

    async def uploader(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            start = time.perf_counter()
            response = await client.post(
                "/upload", files={"file": ("b.jpg", data, "image/jpeg")}, headers={"X-API-Key": key}
            )
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(uploader(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return uploads / elapsed, statistics.median(latencies)


async def finish_all(database_url: str) -> None:
    """Every task done, as a worker would leave them: the next round's counts start from 0."""
    pool = await make_driver_pool(database_url, max_size=1)
    try:
        await pool.execute("UPDATE image_tasks SET status = 'done' WHERE status = 'pending'")
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--uploads", type=int, default=300, help="uploads a round (at most 500)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-bench-limits-"))
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    servers.start()
    try:
        migrate(servers.postgres.url())
        print(f"1. core.key_limits.admit, {args.calls} calls each, one at a time")
        asyncio.run(statement_costs(servers.postgres.url(), args.calls))

        env = bench_environment(servers, workdir, API_KEYS=json.dumps([PLAIN_KEY, LIMITED_KEY]))
        port = free_port()
        api = start_api(env, port, log_file=workdir / "api.log")
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_ready(base_url, timeout=60, process=api)
            print(
                f"2. {ROUNDS} rounds of {args.uploads} uploads of a 600×450 JPEG, 8 at once, one API "
                "process, no worker"
            )
            asyncio.run(ingest(base_url, PLAIN_KEY, 100))  # warm-up
            keys = {"key without limits": PLAIN_KEY, "key with both limits": str(LIMITED_KEY["key"])}
            results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in keys}
            for _ in range(ROUNDS):
                for label, key in keys.items():
                    cpu_before = tree_cpu(api.pid)
                    rate, median = asyncio.run(ingest(base_url, key, args.uploads))
                    cpu = (tree_cpu(api.pid) - cpu_before) / args.uploads
                    results[label].append((rate, median, cpu))
                    asyncio.run(finish_all(servers.postgres.url()))
            for label, rounds in results.items():
                rates = ", ".join(f"{rate:.0f}" for rate, _, _ in rounds)
                medians = ", ".join(f"{median * 1000:.1f}" for _, median, _ in rounds)
                cpus = ", ".join(f"{cpu * 1000:.2f}" for _, _, cpu in rounds)
                print(f"{label:22} uploads/s {rates}; median ms {medians}; API CPU ms/upload {cpus}")
        finally:
            stop_process(api)
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
