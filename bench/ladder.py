"""What each step of an upload costs: the bare endpoint with the real steps added one at a time.

    .venv/bin/python -m bench.ladder [--reps 3] [--concurrency 16] [--seconds 5]

Rungs (bench/bare_app.py's BARE_STEPS), then the real API, measured in turns in one run with the
0.27 MP JPEG: uploads/s, the server process's CPU time per upload and PostgreSQL's. The difference
between two rungs is what that step costs; the difference between the top rung and the real API is
what the real endpoint does beyond the steps (dependencies, checks, middleware, logging context).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.images import photo_jpeg
from bench.stack import BenchStack
from bench.suite import SMALL, Plan, Suite

RUNGS = {
    "bare: stream to disk": "",
    "+ fsync, probe, durable rename": "sync",
    "+ row by plain asyncpg (no SQLAlchemy)": "sync,asyncpg",
    "+ row by Core INSERT … RETURNING, no pre-ping": "sync,core,noping",
    "+ row by Core INSERT … RETURNING": "sync,core",
    "+ row by ORM add/flush/commit": "sync,orm",
    "+ publish and mark queued (outbox)": "sync,orm,publish",
}


async def rung(suite: Suite, name: str, steps: str | None, args: argparse.Namespace) -> dict[str, Any]:
    await suite.stack.empty()
    app = "api.main:app" if steps is None else "bench.bare_app:app"
    async with suite.stack.api(app=app, name="ladder", env={"BARE_STEPS": steps or ""}) as api:
        server = machine.process_cpu(api.process.pid)
        services = suite.services_cpu()
        result = await suite.load(
            api.port,
            "small",
            count=100_000,
            concurrency=args.concurrency,
            max_seconds=args.seconds,
            warmup=50,
        )
        server = machine.process_cpu(api.process.pid) - server
        postgres = suite.services_cpu()["postgres"] - services["postgres"]
    done = max(len(result["latencies"]), 1)
    return {
        "rung": name,
        "rate": result["statuses"].get("200", 0) / result["elapsed"],
        "p99_ms": report.percentile(result["latencies"], 0.99) * 1000,
        "server_cpu_ms": server / done * 1000,
        "postgres_cpu_ms": postgres / done * 1000,
    }


async def ladder(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-ladder-"))
    stack = BenchStack(workdir)
    try:
        small = workdir / "small.jpg"
        small.write_bytes(photo_jpeg(*SMALL))
        await stack.start()
        suite = Suite(stack, Plan.quick(args.reps), {"small": small})
        rungs: dict[str, str | None] = {**RUNGS, "the real API (POST /upload)": None}
        runs = []
        for rep in range(args.reps):
            for name, steps in rungs.items():
                runs.append({"rep": rep, **await rung(suite, name, steps, args)})
            print(f"repetition {rep + 1} of {args.reps} done", flush=True)
        print(f"\nconcurrency {args.concurrency}, 0.27 MP JPEG, median (min–max) of {args.reps}\n")
        print("| rung | uploads/s | p99 ms | server CPU ms/upload | PostgreSQL CPU ms/upload |")
        print("|---|---|---|---|---|")
        for name in rungs:
            chosen = [run for run in runs if run["rung"] == name]
            cells = [report.Spread.of(run[key] for run in chosen) for key in ("rate", "p99_ms")]
            cpu = [
                report.Spread.of(run[key] for run in chosen) for key in ("server_cpu_ms", "postgres_cpu_ms")
            ]
            print(
                f"| {name} | {cells[0].show()} | {cells[1].show(1)} | {cpu[0].show(2)} | {cpu[1].show(2)} |"
            )
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(ladder(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
