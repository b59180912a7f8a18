"""What a change bought: the code before and after it, measured in turns in one run.

    .venv/bin/python -m bench.compare --before HEAD~1 [--reps 5] [--what ingest --what drain]
    .venv/bin/python -m bench.compare --before HEAD --after-uvicorn-arg=--no-access-log
    .venv/bin/python -m bench.compare --before HEAD --what drain \
        --before-env DISPATCH_WINDOW=0 --after-env DISPATCH_WINDOW=32

`--before` is any git ref: its tree is exported (`git archive`) to a temporary folder and its API and
workers run from there, against the same throwaway PostgreSQL and NATS as the working tree's. The two
take turns (before, after, before, after, ...), so a burst of other load on the machine falls on
both; each repetition gives a ratio after / before, and the figure is their median with min–max.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.images import photo_jpeg
from bench.stack import BenchStack
from bench.suite import SMALL, Plan, Suite
from devstack.stack import PROJECT_ROOT


def export_tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", ref], cwd=PROJECT_ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


async def ingest_once(
    suite: Suite, root: Path, uvicorn_args: list[str], concurrency: int, env: dict[str, str]
) -> dict[str, Any]:
    await suite.stack.empty()
    async with suite.stack.api(root=root, uvicorn_args=uvicorn_args, env=env) as api:
        cpu_before = suite.cpu.snapshot()
        api_cpu = report_cpu(api.process.pid)
        sessions = await suite.stack.sessions_opened()
        result = await suite.load(
            api.port, "small", count=5000, concurrency=concurrency, max_seconds=6, warmup=50
        )
        api_cpu = report_cpu(api.process.pid) - api_cpu
        sessions = await suite.stack.sessions_opened() - sessions
        other = suite.cpu.between(cpu_before, suite.cpu.snapshot())["other_cpu_share"]
    done = len(result["latencies"])
    return {
        "rate": result["statuses"].get("200", 0) / result["elapsed"],
        "p99_ms": report.percentile(result["latencies"], 0.99) * 1000,
        "api_cpu_ms": api_cpu / max(done, 1) * 1000,
        "pg_sessions_per_1000": sessions / max(done, 1) * 1000,
        "other_load": other,
    }


async def drain_once(
    suite: Suite, root: Path, uvicorn_args: list[str], tasks: int, env: dict[str, str]
) -> dict[str, Any]:
    await suite.stack.empty()
    # The API stays up while the worker drains: with DISPATCH_WINDOW set, its dispatcher is what
    # lets the waiting tasks into the stream (and what it costs is part of the drain's).
    async with suite.stack.api(root=root, uvicorn_args=uvicorn_args, env=env) as api:
        await suite.load(api.port, "small", count=tasks, concurrency=16, max_seconds=120)
        async with suite.stack.workers(1, root=root, env=env) as (pid,):
            cpu, api_cpu = report_cpu(pid), report_cpu(api.process.pid)
            postgres = suite.services_cpu()["postgres"]
            started = time.time()
            counts = await suite.stack.wait_final(tasks, within=300)
            last = await suite.stack.db.fetchval(
                "SELECT extract(epoch FROM max(finished_at)) FROM image_tasks"
            )
            cpu, api_cpu = report_cpu(pid) - cpu, report_cpu(api.process.pid) - api_cpu
            postgres = suite.services_cpu()["postgres"] - postgres
    # wait_final raised if the drain did not end: its idle minutes' CPU over the few images done
    # read as 53 ms of PostgreSQL per image once (the window's first run, with the API stopped).
    done = max(counts.get("done", 0), 1)
    return {
        "rate": counts.get("done", 0) / (float(last) - started),
        # CPU time per image is far steadier than a rate on a machine shared with other work.
        "worker_cpu_ms": cpu / done * 1000,
        "postgres_cpu_ms": postgres / done * 1000,
        "api_cpu_ms": api_cpu / done * 1000,
    }


async def overhead_once(
    suite: Suite, root: Path, uvicorn_args: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """Upload → done at concurrency 1 with one worker (the suite's queue-overhead scenario)."""
    await suite.stack.empty()
    async with (
        suite.stack.api(root=root, uvicorn_args=uvicorn_args, env=env) as api,
        suite.stack.workers(1, root=root, env=env),
    ):
        figures = await suite.overhead_once(api, 0, pillow_ms=0.0)
    return {key: figures[key] for key in ("server_p50_ms", "server_p99_ms", "client_p50_ms", "client_p99_ms")}


def _settings(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def report_cpu(pid: int) -> float:
    from bench.machine import process_cpu

    return process_cpu(pid)


async def compare(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-compare-"))
    before_root = export_tree(args.before, workdir / "before")
    stack = BenchStack(workdir)
    try:
        small = workdir / "small.jpg"
        small.write_bytes(photo_jpeg(*SMALL))
        await stack.start()
        plan = dataclasses.replace(Plan.quick(args.reps), overhead_uploads=args.overhead_uploads)
        suite = Suite(stack, plan, {"small": small})
        variants = {
            "before": (before_root, list(args.before_uvicorn_arg), _settings(args.before_env)),
            "after": (PROJECT_ROOT, list(args.after_uvicorn_arg), _settings(args.after_env)),
        }
        runs: list[dict[str, Any]] = []
        for rep in range(args.reps):
            for name, (root, uvicorn_args, env) in variants.items():
                if "ingest" in args.what:
                    for concurrency in args.concurrency:
                        figures = await ingest_once(suite, root, uvicorn_args, concurrency, env)
                        runs.append(
                            {"rep": rep, "variant": name, "what": f"ingest c{concurrency}", **figures}
                        )
                if "overhead" in args.what:
                    figures = await overhead_once(suite, root, uvicorn_args, env)
                    runs.append({"rep": rep, "variant": name, "what": "queue overhead c1", **figures})
                if "drain" in args.what:
                    figures = await drain_once(suite, root, uvicorn_args, args.drain_tasks, env)
                    runs.append({"rep": rep, "variant": name, "what": "drain 1 worker", **figures})
            print(f"repetition {rep + 1} of {args.reps} done", flush=True)
        before = [*args.before_uvicorn_arg, *args.before_env]
        after = [*args.after_uvicorn_arg, *args.after_env]
        print(f"\nbefore: {args.before} {before}; after: working tree {after}\n")
        print(
            "| scenario | figure | before | after | after / before (per repetition) |\n|---|---|---|---|---|"
        )
        for what in dict.fromkeys(run["what"] for run in runs):
            first = next(run for run in runs if run["what"] == what)
            for key in [key for key in first if key not in ("rep", "variant", "what")]:
                before = [r for r in runs if r["what"] == what and r["variant"] == "before"]
                after = [r for r in runs if r["what"] == what and r["variant"] == "after"]
                ratios = report.Spread.of(
                    a[key] / b[key] for a, b in zip(after, before, strict=True) if b.get(key)
                )
                digits = 2 if key == "other_load" else 1
                print(
                    f"| {what} | {key} | {report.Spread.of(r[key] for r in before).show(digits)} "
                    f"| {report.Spread.of(r[key] for r in after).show(digits)} | {ratios.show(2)} |"
                )
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the code to compare with")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--what", action="append", choices=("ingest", "overhead", "drain"))
    parser.add_argument("--concurrency", type=int, action="append")
    parser.add_argument("--drain-tasks", type=int, default=1000)
    parser.add_argument("--overhead-uploads", type=int, default=100)
    parser.add_argument("--before-uvicorn-arg", action="append", default=[])
    parser.add_argument("--after-uvicorn-arg", action="append", default=[])
    # Settings for one side's API and worker, e.g. the same code with and without a dispatch window:
    # --before HEAD --before-env DISPATCH_WINDOW=0 --after-env DISPATCH_WINDOW=32
    parser.add_argument("--before-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    args.what = args.what or ["ingest"]
    args.concurrency = args.concurrency or [16]
    asyncio.run(compare(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
