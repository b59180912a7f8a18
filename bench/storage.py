"""What the `nats` and `s3` storage backends cost per image against `local` (not a test).

    .venv/bin/python -m bench.storage [--uploads 200] [--concurrency 8] [--size 320x240] [--rounds 2]
                                      [--backends local,nats,s3]

Starts throwaway PostgreSQL, NATS and (for s3) SeaweedFS on 127.0.0.1. Each round runs the backends
in turn, each with a fresh API process and one worker: a warm-up, then `--uploads` JPEGs at
`--concurrency`, timed from the first upload to the last task `done` (end to end), then every output
fetched once through `/processed/…`; then, the worker stopped, `--uploads` more uploads alone
(ingest: what the API and the stores spend taking an upload in). Besides wall time it reads the CPU
time (user + system, from /proc) that the API, the worker, nats-server and the S3 server spent on
each measured part: on a shared machine that is the steadier figure for "cost per image".
PostgreSQL does the same work for every backend and is left out.
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
from devstack.servers import LocalSeaweed, free_port
from devstack.stack import LocalServers, migrate, start_api, stop_process, wait_until_ready
from tests import images

WARM_UP_UPLOADS = 30
BACKENDS = ("local", "nats", "s3")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    backend: str
    processing_seconds: float
    upload_p50: float
    serve_seconds: float
    cpu_seconds: dict[str, float]
    not_done: int
    ingest_seconds: float
    ingest_cpu_seconds: dict[str, float]


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
    seaweed: LocalSeaweed | None,
) -> Run:
    env = {**env, "STORAGE_BACKEND": backend}
    stores = {"nats-server": servers.nats.pid}
    if backend == "s3":
        assert seaweed is not None
        env.update(seaweed.environment(), S3_BUCKET=f"bench-{time.monotonic_ns()}")
        stores["s3-server"] = seaweed.pid
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    api = start_api(env, port, log_file=workdir / f"api-{backend}.log")
    workers: list[subprocess.Popen] = []
    try:
        wait_until_ready(base_url, timeout=60, process=api)
        workers = run_workers(env, workdir, 1, f"{backend}-{time.monotonic_ns()}")
        _, _, warm_ids = asyncio.run(upload_all(base_url, data, WARM_UP_UPLOADS, args.concurrency))
        asyncio.run(wait_all_done(base_url, warm_ids, within=300))
        processes = {"api": api.pid, "worker": workers[0].pid, **stores}
        before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        _, latencies, task_ids = asyncio.run(upload_all(base_url, data, args.uploads, args.concurrency))
        not_done = asyncio.run(wait_all_done(base_url, task_ids, within=600))
        processing = time.perf_counter() - started
        serving = asyncio.run(fetch_outputs(base_url, task_ids, args.concurrency))
        used = {name: cpu_seconds(pid) - before[name] for name, pid in processes.items()}
        # Ingest alone: no worker competing for the cores or the store.
        for worker in workers:
            stop_process(worker)
        workers = []
        ingesting = {"api": api.pid, **stores}
        before = {name: cpu_seconds(pid) for name, pid in ingesting.items()}
        ingest, _, _ = asyncio.run(upload_all(base_url, data, args.uploads, args.concurrency))
        ingest_used = {name: cpu_seconds(pid) - before[name] for name, pid in ingesting.items()}
        return Run(
            backend, processing, statistics.median(latencies), serving, used, not_done, ingest, ingest_used
        )
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
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the backends (default 2)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default all)")
    args = parser.parse_args()
    backends = [name for name in args.backends.split(",") if name]
    width, height = (int(part) for part in args.size.split("x"))
    data = images.jpeg(width, height)

    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-storage-bench-"))
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    servers.start()
    seaweed = (
        LocalSeaweed(workdir / "seaweed", log_file=workdir / "seaweed.log") if "s3" in backends else None
    )
    try:
        if seaweed is not None:
            seaweed.start()
        migrate(servers.postgres.url())
        env = bench_environment(servers, workdir, WORKER_CONCURRENCY=str(args.worker_concurrency))
        print(
            f"{os.cpu_count()} CPU(s); input {width}×{height} JPEG ({len(data):,} bytes); "
            f"{args.uploads} uploads at concurrency {args.concurrency}; one API, one worker "
            f"(WORKER_CONCURRENCY={args.worker_concurrency}); {args.rounds} round(s)"
        )
        runs = [
            one_run(backend, env, servers, workdir, data, args, seaweed)
            for _ in range(args.rounds)
            for backend in backends
        ]
    finally:
        if seaweed is not None:
            seaweed.stop()
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        "| backend | upload → done, per image | upload p50 | serve, per image "
        "| CPU per image, end to end | ingest alone, per image | CPU per image, ingest alone | not done |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run.backend} | {run.processing_seconds / args.uploads * 1000:.1f} ms | "
            f"{run.upload_p50 * 1000:.0f} ms | {run.serve_seconds / args.uploads * 1000:.2f} ms | "
            f"{_per_image(run.cpu_seconds, args.uploads)} | "
            f"{run.ingest_seconds / args.uploads * 1000:.1f} ms | "
            f"{_per_image(run.ingest_cpu_seconds, args.uploads)} | {run.not_done} |"
        )
    for backend in backends:
        mine = [run for run in runs if run.backend == backend]
        wall = statistics.median(run.processing_seconds for run in mine) / args.uploads * 1000
        cpu = statistics.median(sum(run.cpu_seconds.values()) for run in mine) / args.uploads * 1000
        ingest = statistics.median(sum(run.ingest_cpu_seconds.values()) for run in mine) / args.uploads * 1000
        print(
            f"{backend}: median {wall:.1f} ms wall and {cpu:.1f} ms CPU per image end to end; "
            f"{ingest:.1f} ms CPU per image to ingest"
        )


def _per_image(cpu: dict[str, float], uploads: int) -> str:
    """Total CPU per image, then each process's share (`name value`)."""
    parts = ", ".join(f"{name} {seconds / uploads * 1000:.1f}" for name, seconds in cpu.items())
    return f"{sum(cpu.values()) / uploads * 1000:.1f} ms ({parts})"


if __name__ == "__main__":
    main()
