"""How end-to-end throughput grows with worker processes on this machine (not a test).

    .venv/bin/python -m bench.scaling [--workers 1,2,4] [--uploads 300] [--concurrency 16]

Starts throwaway PostgreSQL and NATS and one API process, all on 127.0.0.1. For each worker count,
starts that many `python -m worker` processes, waits until each is fetching, then uploads
`--uploads` small JPEGs through the API at `--concurrency` and times from the first upload to the
last task `done`; the workers are stopped (SIGTERM) before the next count. Everything shares this
machine's cores, the API and the servers included, so the figures say how far one machine goes, and
on a shared machine they are noisy: run it more than once before reading much into a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.quick import upload_all, wait_all_done
from bench.stack import bench_environment
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, start_api, start_worker, stop_process, wait_until_ready
from tests import images

WARM_UP_UPLOADS = 40


def run_workers(env: dict[str, str], workdir: Path, count: int, label: str) -> list[subprocess.Popen]:
    """Start `count` workers and return once every one has touched its heartbeat (is fetching)."""
    heartbeats = [workdir / f"{label}-worker-{index}.alive" for index in range(count)]
    processes = [
        start_worker({**env, "WORKER_HEARTBEAT_FILE": str(heartbeat)}, log_file=workdir / "workers.log")
        for heartbeat in heartbeats
    ]
    deadline = time.monotonic() + 60
    while not all(heartbeat.exists() for heartbeat in heartbeats):
        if time.monotonic() > deadline or any(process.poll() is not None for process in processes):
            raise RuntimeError(f"workers did not start; see {workdir / 'workers.log'}")
        time.sleep(0.02)
    return processes


def measure(base_url: str, data: bytes, uploads: int, concurrency: int) -> tuple[float, float, int]:
    """(seconds from the first upload to the last task done, median upload latency, tasks not done)."""
    started = time.perf_counter()
    _, latencies, task_ids = asyncio.run(upload_all(base_url, data, uploads, concurrency))
    not_done = asyncio.run(wait_all_done(base_url, task_ids, within=600))
    return time.perf_counter() - started, statistics.median(latencies), not_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker process counts to try (default 1,2,4)")
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--worker-concurrency", type=int, default=2, help="WORKER_CONCURRENCY per process")
    parser.add_argument("--size", default="320x240", help="input image WIDTHxHEIGHT (default 320x240)")
    args = parser.parse_args()
    counts = [int(part) for part in args.workers.split(",")]
    width, height = (int(part) for part in args.size.split("x"))
    data = images.jpeg(width, height)

    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-scaling-"))
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    servers.start()
    api = None
    try:
        migrate(servers.postgres.url())
        env = bench_environment(servers, workdir, WORKER_CONCURRENCY=str(args.worker_concurrency))
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = start_api(env, port, log_file=workdir / "api.log")
        wait_until_ready(base_url, timeout=60, process=api)
        print(
            f"{os.cpu_count()} CPU(s); input {width}×{height} JPEG ({len(data):,} bytes); "
            f"{args.uploads} uploads at concurrency {args.concurrency}; "
            f"WORKER_CONCURRENCY={args.worker_concurrency}; one API process"
        )
        workers = run_workers(env, workdir, 1, "warm-up")
        measure(base_url, data, WARM_UP_UPLOADS, args.concurrency)
        for worker in workers:
            stop_process(worker)

        rows = []
        for count in counts:
            workers = run_workers(env, workdir, count, f"run-{count}")
            try:
                elapsed, latency, not_done = measure(base_url, data, args.uploads, args.concurrency)
            finally:
                for worker in workers:
                    stop_process(worker)
            rows.append((count, elapsed, latency, not_done))

        base_rate = args.uploads / rows[0][1]
        print()
        print("| worker processes | elapsed | images/s | vs first | upload p50 | not done |")
        print("|---|---|---|---|---|---|")
        for count, elapsed, latency, not_done in rows:
            rate = args.uploads / elapsed
            print(
                f"| {count} | {elapsed:.1f} s | {rate:.1f} | {rate / base_rate:.2f}× | "
                f"{latency * 1000:.0f} ms | {not_done} |"
            )
    finally:
        if api is not None:
            stop_process(api)
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
