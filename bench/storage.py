"""What the `nats` storage backend costs per image against `local` (not a test).

    .venv/bin/python -m bench.storage [--uploads 200] [--concurrency 8] [--size 320x240] [--rounds 2]

Starts throwaway PostgreSQL and NATS on 127.0.0.1. Each round runs both backends in turn (local,
then nats), each with a fresh API process and one worker: a warm-up, then `--uploads` JPEGs at
`--concurrency`, timed from the first upload to the last task `done`, then every output fetched once
through `/processed/…`. Besides wall time it reads the CPU time (user + system, from /proc) that
the API, the worker and nats-server spent on the measured part: on a shared machine that is the
steadier figure for "cost per image". PostgreSQL does the same work either way and is left out.
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
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.quick import upload_all, wait_all_done
from bench.scaling import run_workers
from bench.stack import bench_environment
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, start_api, stop_process, wait_until_ready
from tests import images

WARM_UP_UPLOADS = 30
BACKENDS = ("local", "nats")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    backend: str
    processing_seconds: float
    upload_p50: float
    serve_seconds: float
    cpu_seconds: dict[str, float]
    not_done: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def fetch_outputs(base_url: str, task_ids: list[int], concurrency: int) -> float:
    """Seconds to GET every task's output once, `concurrency` at a time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        urls = [(await client.get(f"/status/{task_id}")).json()["processed_url"] for task_id in task_ids]
        pending = list(urls)
        started = time.perf_counter()

        async def fetcher() -> None:
            while pending:
                response = await client.get(pending.pop())
                response.raise_for_status()

        await asyncio.gather(*(fetcher() for _ in range(concurrency)))
        return time.perf_counter() - started


def one_run(
    backend: str,
    env: dict[str, str],
    servers: LocalServers,
    workdir: Path,
    data: bytes,
    args: argparse.Namespace,
) -> Run:
    env = {**env, "STORAGE_BACKEND": backend}
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    api = start_api(env, port, log_file=workdir / f"api-{backend}.log")
    workers: list[subprocess.Popen] = []
    try:
        wait_until_ready(base_url, timeout=60, process=api)
        workers = run_workers(env, workdir, 1, f"{backend}-{time.monotonic_ns()}")
        _, _, warm_ids = asyncio.run(upload_all(base_url, data, WARM_UP_UPLOADS, args.concurrency))
        asyncio.run(wait_all_done(base_url, warm_ids, within=300))
        processes = {"api": api.pid, "worker": workers[0].pid, "nats-server": servers.nats.pid}
        before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        _, latencies, task_ids = asyncio.run(upload_all(base_url, data, args.uploads, args.concurrency))
        not_done = asyncio.run(wait_all_done(base_url, task_ids, within=600))
        processing = time.perf_counter() - started
        serving = asyncio.run(fetch_outputs(base_url, task_ids, args.concurrency))
        used = {name: cpu_seconds(pid) - before[name] for name, pid in processes.items()}
        return Run(backend, processing, statistics.median(latencies), serving, used, not_done)
    finally:
        for worker in workers:
            stop_process(worker)
        stop_process(api)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--worker-concurrency", type=int, default=2, help="WORKER_CONCURRENCY")
    parser.add_argument("--size", default="320x240", help="input image WIDTHxHEIGHT (default 320x240)")
    parser.add_argument("--rounds", type=int, default=2, help="local-then-nats rounds (default 2)")
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    data = images.jpeg(width, height)

    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-storage-bench-"))
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    servers.start()
    try:
        migrate(servers.postgres.url())
        env = bench_environment(servers, workdir, WORKER_CONCURRENCY=str(args.worker_concurrency))
        print(
            f"{os.cpu_count()} CPU(s); input {width}×{height} JPEG ({len(data):,} bytes); "
            f"{args.uploads} uploads at concurrency {args.concurrency}; one API, one worker "
            f"(WORKER_CONCURRENCY={args.worker_concurrency}); {args.rounds} round(s)"
        )
        runs = [
            one_run(backend, env, servers, workdir, data, args)
            for _ in range(args.rounds)
            for backend in BACKENDS
        ]
    finally:
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        "| backend | upload → done, per image | upload p50 | serve, per image "
        "| CPU per image (API + worker + NATS) | not done |"
    )
    print("|---|---|---|---|---|---|")
    for run in runs:
        cpu = sum(run.cpu_seconds.values())
        parts = " + ".join(f"{seconds / args.uploads * 1000:.1f}" for seconds in run.cpu_seconds.values())
        print(
            f"| {run.backend} | {run.processing_seconds / args.uploads * 1000:.1f} ms | "
            f"{run.upload_p50 * 1000:.0f} ms | {run.serve_seconds / args.uploads * 1000:.2f} ms | "
            f"{cpu / args.uploads * 1000:.1f} ms ({parts}) | {run.not_done} |"
        )
    for backend in BACKENDS:
        mine = [run for run in runs if run.backend == backend]
        wall = statistics.median(run.processing_seconds for run in mine) / args.uploads * 1000
        cpu = statistics.median(sum(run.cpu_seconds.values()) for run in mine) / args.uploads * 1000
        print(f"{backend}: median {wall:.1f} ms wall and {cpu:.1f} ms CPU per image")


if __name__ == "__main__":
    main()
