"""A quick throughput check (not a test): ingest rate of one API process, then end-to-end rate.

    .venv/bin/python -m bench.quick [--uploads 500] [--concurrency 16] [--workers 1]

Starts throwaway PostgreSQL and NATS, one API process and, for the second phase, worker processes,
all on 127.0.0.1. Phase 1 uploads with no worker running (uploads/s, latency percentiles); phase 2
starts the workers, times how fast they drain the backlog of phase 1, then reports images/s from
the first upload to the last task `done` with uploads and processing running together.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.stack import bench_environment
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, start_api, start_worker, stop_process, wait_until_ready
from tests import images


async def upload_all(
    base_url: str, data: bytes, count: int, concurrency: int
) -> tuple[float, list[float], list[int]]:
    latencies: list[float] = []
    task_ids: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def sender() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await client.post("/upload", files={"file": ("bench.jpg", data, "image/jpeg")})
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                task_ids.append(response.json()["task_id"])

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, task_ids


async def wait_all_done(base_url: str, task_ids: list[int], within: float) -> int:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        remaining = set(task_ids)
        while remaining and time.monotonic() < deadline:
            last = max(remaining)
            status = (await client.get(f"/status/{last}")).json()["status"]
            if status in ("done", "failed"):
                remaining.discard(last)
            else:
                await asyncio.sleep(0.02)
        failed = 0
        for task_id in task_ids:
            if (await client.get(f"/status/{task_id}")).json()["status"] != "done":
                failed += 1
        return failed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size", default="600x450", help="input image WIDTHxHEIGHT (default 600x450)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-bench-"))
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    servers.start()
    processes = []
    try:
        migrate(servers.postgres.url())
        env = bench_environment(servers, workdir)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = start_api(env, port, log_file=workdir / "api.log")
        processes.append(api)
        wait_until_ready(base_url, timeout=60, process=api)
        width, height = (int(part) for part in args.size.split("x"))
        data = images.jpeg(width, height)
        print(
            f"input: {width}×{height} JPEG, {len(data):,} bytes; "
            f"{args.uploads} uploads, {args.concurrency} at once"
        )

        asyncio.run(upload_all(base_url, data, 50, args.concurrency))  # warm-up
        elapsed, latencies, _ = asyncio.run(upload_all(base_url, data, args.uploads, args.concurrency))
        print(
            f"ingest (no worker): {args.uploads / elapsed:.0f} uploads/s, "
            f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
        )

        heartbeats = [workdir / f"worker-{index}.alive" for index in range(args.workers)]
        for heartbeat in heartbeats:
            processes.append(
                start_worker(
                    {**env, "WORKER_HEARTBEAT_FILE": str(heartbeat)}, log_file=workdir / "worker.log"
                )
            )
        # Drain: the backlog of phase 1, timed from the moment every worker is fetching.
        while not all(heartbeat.exists() for heartbeat in heartbeats):
            time.sleep(0.01)
        started = time.perf_counter()
        asyncio.run(wait_all_done(base_url, [args.uploads + 50], within=300))
        elapsed = time.perf_counter() - started
        print(
            f"drain of {args.uploads + 50} queued tasks ({args.workers} worker process(es)): "
            f"{(args.uploads + 50) / elapsed:.0f} images/s"
        )
        started = time.perf_counter()
        _, _, task_ids = asyncio.run(upload_all(base_url, data, args.uploads, args.concurrency))
        failed = asyncio.run(wait_all_done(base_url, task_ids, within=600))
        elapsed = time.perf_counter() - started
        print(
            f"end to end ({args.workers} worker process(es)): {args.uploads / elapsed:.0f} images/s, "
            f"{failed} not done"
        )
    finally:
        for process in reversed(processes):
            stop_process(process)
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
