"""Ours beside the original design, in one run, on the same PostgreSQL and NATS, with real clients.

    .venv/bin/python -m bench.sidebyside [--quick] [--reps 3] [--out bench/results] [--name NAME]
        [--only small|large|PREFIX ...] [--large-uploads N] [--api-processes N]

The original (../shared/original, see its README there) is started as its README says: `uvicorn
api.main:app` and `python worker/worker.py`, PYTHONPATH at its folder, its four settings
(DATABASE_URL, NATS_URL, UPLOADS_DIR, PROCESSED_DIR), on a database of its own in the same PostgreSQL
server, migrated by its own Alembic migration (applied through Alembic's MigrationContext on an asyncpg
connection: its env.py wants psycopg2, which neither venv has). Its stream (`image_tasks`) and ours
(`IMAGE_TASKS`) live side by side in the same NATS server.

Scenarios, each run for ours and the original in turn (ours, original, ours, ...), `--reps` times,
reporting the median: ingest (API alone, no worker) of a 600×450 JPEG at c16 and c64 with each client
(bench.load's raw generator, httpx, requests, aiohttp when installed); end to end (API and one worker)
of 400 small uploads at c16; ingest of 4000×3000 photos (3 MB) at c4 with each client, and their end to
end with httpx. CPU per upload or image is counted for every
process: API (the launcher and, with `--api-processes N` > 1, its N children), worker (and its
children), PostgreSQL (postmaster and its backends), NATS and the client.
The client's figures are its own (getrusage); a client that opens more connections than its
concurrency had connections closed under it. `--only` keeps the scenarios whose label, spaces as
hyphens, starts with it (`--only ingest-httpx`: httpx ingest at c16 and c64; repeatable). Each run
records the machine's 1-minute load average as it starts: on a shared machine the rates move with it,
the CPU per upload much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg

from bench import machine, report
from bench.api_processes import accepted_per_process
from bench.clients import available
from bench.images import photo_jpeg
from bench.stack import BenchStack
from devstack.servers import free_port
from devstack.stack import PROJECT_ROOT, stop_process

ORIGINAL_ROOT = PROJECT_ROOT.parent / "shared" / "original"
ORIGINAL_DATABASE = "original"
ORIGINAL_REVISION = "33d3e37439e0"
DESIGNS = ("ours", "original")
SMALL = (600, 450)
LARGE = (4000, 3000)


@dataclass(frozen=True)
class Plan:
    reps: int
    clients: tuple[str, ...]
    ingest_count: int
    concurrencies: tuple[int, ...]
    e2e_uploads: int
    e2e_clients: tuple[str, ...]
    large_uploads: int
    # Which scenarios run: every one (empty), else those whose image is named ("small": 600×450,
    # "large": 4000×3000) or whose label, spaces as dashes, starts with a given prefix.
    only: tuple[str, ...] = ()
    # API_PROCESSES for ours (the original runs as its README says: one uvicorn process). The API's
    # CPU is its launcher's whole tree, so with N > 1 the supervisor and every child count.
    api_processes: int = 1

    def keeps(self, label: str, image: str) -> bool:
        return not self.only or any(
            prefix == image or label.replace(" ", "-").startswith(prefix) for prefix in self.only
        )

    @classmethod
    def full(cls, reps: int) -> Plan:
        clients = tuple(c for c in ("raw", "httpx", "requests", "aiohttp") if c == "raw" or available(c))
        # 60 photos of 12 MP (24 before): a 24-photo run lasts 2-5 s, of which the wait for the first
        # upload and a last render alone (one core idle) take up to 0.2 s, and load spikes weigh more.
        return cls(reps, clients, 600, (16, 64), 400, ("httpx", "requests"), 60)

    @classmethod
    def quick(cls, reps: int) -> Plan:
        return cls(reps, ("raw", "httpx"), 300, (16, 64), 200, ("httpx",), 8)

    @classmethod
    def smoke(cls) -> Plan:
        return cls(1, ("raw", "httpx", "requests"), 40, (16,), 20, ("httpx",), 2)


@dataclass
class Design:
    """One design's running processes and where its rows are."""

    name: str
    api_pid: int
    port: int
    worker_pid: int | None = None


class SideBySide:
    def __init__(self, stack: BenchStack, plan: Plan, files: dict[str, Path]) -> None:
        self.stack = stack
        self.plan = plan
        self.files = files
        self.next_index = 0  # file names never repeat (the original stores under the client's name)

    # -- processes ------------------------------------------------------------------------------

    def original_env(self) -> dict[str, str]:
        work = self.stack.workdir / "original"
        return {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ORIGINAL_ROOT),
            "DATABASE_URL": self.stack.servers.postgres.url(ORIGINAL_DATABASE),
            "NATS_URL": self.stack.servers.nats.url,
            "UPLOADS_DIR": str(work / "uploads"),
            "PROCESSED_DIR": str(work / "processed"),
        }

    async def migrate_original(self) -> None:
        await self.stack.db.execute(f"CREATE DATABASE {ORIGINAL_DATABASE}")
        from sqlalchemy.ext.asyncio import create_async_engine

        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        script = ScriptDirectory(str(ORIGINAL_ROOT / "alembic"))
        engine = create_async_engine(self.stack.servers.postgres.url(ORIGINAL_DATABASE))

        def upgrade(connection: Any) -> None:
            context = MigrationContext.configure(
                connection, opts={"fn": lambda rev, _: script._upgrade_revs(ORIGINAL_REVISION, rev)}
            )
            with Operations.context(context), context.begin_transaction():
                context.run_migrations()

        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
        await engine.dispose()

    @contextlib.asynccontextmanager
    async def design(self, name: str, *, worker: bool) -> AsyncIterator[Design]:
        port = free_port()
        log = self.stack.workdir / f"{name}.log"
        if name == "ours":
            async with self.stack.api(env={"API_PROCESSES": str(self.plan.api_processes)}) as api:
                design = Design(name, api.process.pid, api.port)
                if worker:
                    async with self.stack.workers(1) as pids:
                        design.worker_pid = pids[0]
                        yield design
                else:
                    yield design
            return
        env = self.original_env()
        for folder in ("UPLOADS_DIR", "PROCESSED_DIR"):
            await asyncio.to_thread(Path(env[folder]).mkdir, parents=True, exist_ok=True)
        served = _start([sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)], env, log)
        processes = [served]
        try:
            await asyncio.to_thread(_wait_health, port, served)
            design = Design(name, served.pid, port)
            if worker:
                processes.append(_start([sys.executable, "worker/worker.py"], env, log))
                design.worker_pid = processes[-1].pid
                await _wait_original_worker(self.stack.servers.nats.url)
            yield design
        finally:
            for process in processes:
                await asyncio.to_thread(stop_process, process)

    async def empty(self) -> None:
        await self.stack.empty()
        connection = await self._original_db()
        try:
            await connection.execute("TRUNCATE image_tasks")
        finally:
            await connection.close()
        import nats

        nc = await nats.connect(self.stack.servers.nats.url)
        try:
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream("image_tasks")
        finally:
            await nc.close()
        work = self.stack.workdir / "original"
        for folder in ("uploads", "processed"):
            self.stack.set_aside(work / folder)

    async def _original_db(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            user="postgres", database=ORIGINAL_DATABASE, host=str(self.stack.servers.postgres.socket_dir)
        )

    async def done(self, design: Design) -> int:
        if design.name == "ours":
            counts = await self.stack.counts()
            return counts.get("done", 0) + counts.get("failed", 0)
        connection = await self._original_db()
        try:
            return int(await connection.fetchval("SELECT count(*) FROM image_tasks WHERE status = 'done'"))
        finally:
            await connection.close()

    # -- one measurement ------------------------------------------------------------------------

    def cpu(self, design: Design) -> dict[str, float]:
        return {
            "api": machine.tree_cpu(design.api_pid),
            "worker": machine.tree_cpu(design.worker_pid),
            "postgres": machine.tree_cpu(self.stack.postmaster_pid()),
            "nats": machine.process_cpu(self.stack.nats_pid()),
        }

    def served(self, design: Design) -> dict[int, float]:
        """Uploads each of our API's processes has accepted so far (none with one process)."""
        return accepted_per_process(design.api_pid) if design.name == "ours" else {}

    async def client(self, design: Design, client: str, image: str, count: int, concurrency: int) -> dict:
        first, self.next_index = self.next_index, self.next_index + count
        if client == "raw":
            command = ["-m", "bench.load", "send", "--max-seconds", "600"]
        else:
            command = ["-m", "bench.clients", "--client", client, "--first-index", str(first)]
        command += ["--port", str(design.port), "--file", str(self.files[image])]
        command += ["--count", str(count), "--concurrency", str(concurrency)]
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command, stdout=asyncio.subprocess.PIPE, cwd=PROJECT_ROOT
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{client} failed with code {process.returncode}")
        return json.loads(output)

    async def measure(
        self, design: Design, client: str, image: str, count: int, concurrency: int, *, until_done: bool
    ) -> dict[str, Any]:
        before = self.cpu(design)
        served_before = self.served(design)
        started = time.monotonic()
        result = await self.client(design, client, image, count, concurrency)
        ok = result["statuses"].get("200", 0)
        if until_done:
            deadline = time.monotonic() + 600
            while await self.done(design) < ok and time.monotonic() < deadline:  # noqa: ASYNC110 (a DB poll)
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started if until_done else result["elapsed"]
        after = self.cpu(design)
        # With API_PROCESSES > 1: how the uploads split between the processes (the kernel's choice).
        served = [count - served_before.get(pid, 0.0) for pid, count in self.served(design).items()]
        cpu = {name: (after[name] - before[name]) * 1000 / max(ok, 1) for name in before}
        cpu["client"] = result["cpu_seconds"] * 1000 / max(ok, 1)
        cpu["all"] = sum(cpu.values())
        finished = await self.done(design) if until_done else ok
        return {
            "design": design.name,
            "client": client,
            "image": image,
            "concurrency": concurrency,
            "count": count,
            "ok": ok,
            "finished": finished,
            "statuses": result["statuses"],
            "transport_errors": result["transport_errors"],
            "connections": result.get("connections"),
            "rate": finished / elapsed,
            "p50_ms": report.percentile(result["latencies"], 0.5) * 1000,
            "p99_ms": report.percentile(result["latencies"], 0.99) * 1000,
            "cpu_ms": {name: round(value, 2) for name, value in cpu.items()},
            "accepted_per_process": served,
        }

    # -- scenarios ------------------------------------------------------------------------------

    async def scenarios(self) -> list[dict[str, Any]]:
        plan = self.plan
        runs: list[dict[str, Any]] = []
        # (label, worker running, client, image, uploads, concurrency, wait until processed)
        steps: list[tuple[str, bool, str, str, int, int]] = [
            (f"ingest {client} c{n}", False, client, "small", plan.ingest_count, n)
            for client in plan.clients
            for n in plan.concurrencies
        ]
        # The API's CPU per 3 MB upload from each client (a client's framing could cost the API more).
        steps += [(f"ingest 12 MP {c} c4", False, c, "large", plan.large_uploads, 4) for c in plan.clients]
        steps += [(f"end to end {c} c16", True, c, "small", plan.e2e_uploads, 16) for c in plan.e2e_clients]
        steps.append(("12 MP end to end httpx c4", True, "httpx", "large", plan.large_uploads, 4))
        steps = [step for step in steps if plan.keeps(step[0], step[3])]
        for rep in range(plan.reps):
            for label, worker, client, image, count, concurrency in steps:
                for name in DESIGNS:
                    await self.empty()
                    async with self.design(name, worker=worker) as design:
                        load = os.getloadavg()[0]
                        run = await self.measure(design, client, image, count, concurrency, until_done=worker)
                    run.update(scenario=label, rep=rep, load_average=load)
                    runs.append(run)
                    print(
                        f"  {label:28} {name:8} {run['rate']:7.1f}/s p99 {run['p99_ms']:7.0f} ms "
                        f"all {run['cpu_ms']['all']:6.1f} ms client {run['cpu_ms']['client']:5.1f} ms "
                        f"conns {run['connections']} load {load:.1f}"
                        + (f" split {run['accepted_per_process']}" if run["accepted_per_process"] else ""),
                        flush=True,
                    )
        return runs


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(command, cwd=ORIGINAL_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)


def _wait_health(port: int, process: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the original's API exited with code {process.returncode}")
        url = f"http://127.0.0.1:{port}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
            return
        time.sleep(0.1)
    raise TimeoutError("the original's API did not start within 60 s")


async def _wait_original_worker(nats_url: str) -> None:
    """Its durable consumer exists once the worker subscribed."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await nc.jetstream().consumer_info("image_tasks", "image_worker")
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the original's worker did not subscribe within 60 s")
    finally:
        await nc.close()


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and design: medians over the repetitions."""
    rows: list[dict[str, Any]] = []
    for scenario in dict.fromkeys(run["scenario"] for run in runs):
        for name in DESIGNS:
            mine = [r for r in runs if r["scenario"] == scenario and r["design"] == name]
            if not mine:
                continue
            cpu_names = mine[0]["cpu_ms"].keys()
            rows.append(
                {
                    "scenario": scenario,
                    "design": name,
                    "rate": statistics.median(r["rate"] for r in mine),
                    "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                    "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                    "connections": statistics.median(r["connections"] or 0 for r in mine),
                    "failed": sum(r["count"] - r["ok"] for r in mine),
                    "cpu_ms": {k: statistics.median(r["cpu_ms"][k] for r in mine) for k in cpu_names},
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(not run: the original's code was not found)"
    lines = [
        "| scenario | design | per s | p50 ms | p99 ms | conns | API | worker | PG | NATS | client | all "
        "(CPU ms per upload/image) | ours/original rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["scenario"], r["design"]): r for r in rows}
    for row in rows:
        cpu = row["cpu_ms"]
        other = by.get((row["scenario"], "original"))
        ratio = f"{row['rate'] / other['rate']:.2f}" if row["design"] == "ours" and other else ""
        lines.append(
            f"| {row['scenario']} | {row['design']} | {row['rate']:.1f} | {row['p50_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | {row['connections']:.0f} | {cpu['api']:.1f} | {cpu['worker']:.1f} | "
            f"{cpu['postgres']:.1f} | {cpu['nats']:.1f} | {cpu['client']:.1f} | {cpu['all']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def load_line(runs: list[dict[str, Any]]) -> str:
    loads = [run["load_average"] for run in runs if "load_average" in run]
    if not loads:
        return ""
    median = statistics.median(loads)
    return f"1-minute load average as runs started: {min(loads):.1f}–{max(loads):.1f} (median {median:.1f})"


async def on_stack(stack: BenchStack, quick: bool, reps: int) -> dict[str, Any]:
    """`make bench`'s scenario: on the suite's own servers (and its folder for the two images)."""
    if not (ORIGINAL_ROOT / "api" / "main.py").exists():
        print(f"  skipped: the original's code is not at {ORIGINAL_ROOT}", flush=True)
        return {"skipped": f"the original's code is not at {ORIGINAL_ROOT}", "summary": []}
    plan = Plan.quick(reps) if quick else Plan.full(reps)
    files = await _images(stack.workdir)
    bench = SideBySide(stack, plan, files)
    await bench.migrate_original()
    runs = await bench.scenarios()
    await bench.empty()
    return {"plan": plan.__dict__, "runs": runs, "summary": summarise(runs)}


async def _images(folder: Path) -> dict[str, Path]:
    files = {"small": folder / "sidebyside-small.jpg", "large": folder / "sidebyside-large.jpg"}
    files["small"].write_bytes(await asyncio.to_thread(photo_jpeg, *SMALL))
    files["large"].write_bytes(await asyncio.to_thread(photo_jpeg, *LARGE))
    return files


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.smoke() if args.smoke else Plan.quick(args.reps) if args.quick else Plan.full(args.reps)
    plan = replace(
        plan,
        only=tuple(args.only or ()),
        large_uploads=args.large_uploads or plan.large_uploads,
        api_processes=args.api_processes,
    )
    workdir = Path(tempfile.mkdtemp(prefix="sidebyside-"))
    files = await _images(workdir)
    stack = BenchStack(workdir)
    await stack.start()
    try:
        bench = SideBySide(stack, plan, files)
        await bench.migrate_original()
        started = time.monotonic()
        runs = await bench.scenarios()
        return {
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine.machine(),
            "plan": plan.__dict__,
            "seconds": round(time.monotonic() - started),
            "runs": runs,
            "summary": summarise(runs),
        }
    finally:
        await stack.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer uploads, httpx and raw only")
    parser.add_argument("--smoke", action="store_true", help="a few uploads of each kind: does it run?")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", help="results file name (default: the date, -sidebyside)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="small|large|PREFIX",
        help="only the 600×450 (small) or 4000×3000 (large) scenarios, or those starting so (ingest-httpx)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, files)")
    parser.add_argument("--large-uploads", type=int, help="uploads per 12 MP scenario (default: the plan's)")
    parser.add_argument(
        "--api-processes", type=int, default=1, metavar="N", help="API_PROCESSES for ours (default 1)"
    )
    args = parser.parse_args()
    if not (ORIGINAL_ROOT / "api" / "main.py").exists():
        print(f"the original's code is not at {ORIGINAL_ROOT}", file=sys.stderr)
        return 2
    result = asyncio.run(run(args))
    suffix = ("-quick" if args.quick else "") + "".join(f"-{only}" for only in args.only or ())
    suffix += f"-{args.api_processes}procs" if args.api_processes != 1 else ""
    name = args.name or datetime.date.today().isoformat() + "-sidebyside" + suffix
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    text = table(result["summary"]) + "\n\n" + load_line(result["runs"])
    (args.out / f"{name}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
