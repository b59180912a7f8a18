"""A soak run (not a test): many uploads while worker processes are SIGKILLed and restarted.

    .venv/bin/python -m bench.soak [--uploads 2000] [--concurrency 64] [--workers 2] [--kill-every 3]

Starts throwaway PostgreSQL and NATS, one API process and `--workers` worker processes, all on
127.0.0.1. While the uploads go in and until every accepted task is final, one worker is SIGKILLed
every `--kill-every` seconds (taking turns) and started again at once. Each upload carries an
Idempotency-Key and is sent again if the connection fails. Then it checks what users would see and
prints a Markdown table: accepted, done, failed, lost (accepted but never final, or `done` without
its output), duplicates (a task rendered and recorded more than once), 5xx answers, elapsed time and
images/s. Exits 1 if anything was lost or duplicated or answered 5xx, or a worker did not stop cleanly.

Redelivery is made quick with the test settings (ACK_WAIT_SECONDS=5, RETRY_DELAY_SECONDS=0.5); the
run stops after `--max-seconds` whatever happens, and every process it started is stopped on the
way out (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.stack import bench_environment
from core.db import make_engine
from core.models import ImageTask
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, start_api, start_worker, stop_process, wait_until_ready
from tests import images

FINAL = ("done", "failed")
# Short redelivery so a killed worker's images come back within seconds (the tests use the same).
SOAK_SETTINGS = {
    "ACK_WAIT_SECONDS": "5",
    "RETRY_DELAY_SECONDS": "0.5",
    "OUTBOX_INTERVAL_SECONDS": "0.5",
    # The shortest allowed: a lost message is re-queued within a minute.
    "LOST_AFTER_SECONDS": "60",
    "MAX_ATTEMPTS": "5",
    # INFO: the workers' "task N done" lines are how renders are counted (see count_renders).
    "LOG_LEVEL": "INFO",
}
SHOWN_SETTINGS = (
    "ACK_WAIT_SECONDS",
    "RETRY_DELAY_SECONDS",
    "OUTBOX_INTERVAL_SECONDS",
    "MAX_ATTEMPTS",
    "LOST_AFTER_SECONDS",
    "WORKER_CONCURRENCY",
)


# A client that loses the connection cannot know whether its upload was stored, so it sends it again
# with the same Idempotency-Key, as a careful client would; the API returns the task it made, if any.
TRANSPORT_RETRIES = 3


@dataclass
class Uploads:
    task_ids: set[int] = field(default_factory=set)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    given_up: int = 0  # uploads still without an answer after TRANSPORT_RETRIES retries
    replayed: int = 0  # retries answered with the task the lost attempt had created
    elapsed: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


@dataclass
class Workers:
    """The worker processes, and the chaos: kill one (taking turns) and start it again at once.

    Each worker touches its own heartbeat file once its signal handlers are in place, so the final
    SIGTERM can wait for a just-restarted worker to get that far (before, SIGTERM simply kills it).
    """

    env: dict[str, str]
    workdir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    kills: int = 0
    unexpected_exits: int = 0

    def _heartbeat(self, slot: int) -> Path:
        return self.workdir / f"worker-{slot}.heartbeat"

    def _start(self, slot: int) -> subprocess.Popen:
        heartbeat = self._heartbeat(slot)
        heartbeat.unlink(missing_ok=True)
        env = {**self.env, "WORKER_HEARTBEAT_FILE": str(heartbeat)}
        return start_worker(env, log_file=self.workdir / "workers.log")

    def start(self, count: int) -> None:
        for slot in range(count):
            self.processes.append(self._start(slot))

    def kill_and_restart(self) -> None:
        slot = self.kills % len(self.processes)
        process = self.processes[slot]
        if process.poll() is not None:
            self.unexpected_exits += 1  # it died on its own before we got to it
        else:
            process.kill()
            process.wait()
        self.kills += 1
        self.processes[slot] = self._start(slot)

    def stop_all(self, *, timeout: float = 30) -> list[int | None]:
        """SIGTERM each worker once it is up, waiting for its graceful exit; returns the exit codes."""
        deadline = time.monotonic() + timeout
        for slot, process in enumerate(self.processes):
            while not self._heartbeat(slot).exists() and process.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        return [stop_process(process) for process in self.processes]

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


async def upload_all(base_url: str, data: bytes, count: int, concurrency: int, deadline: float) -> Uploads:
    result = Uploads()
    run_id = uuid.uuid4().hex[:12]
    remaining = iter(range(count))
    # uvicorn closes a connection idle for 5 s, httpx's default expiry is also 5 s: a request sent on
    # a connection at that very moment fails (ReadError). Expiring idle connections sooner avoids it.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2
    )
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def send(index: int) -> httpx.Response | None:
            files = {"file": (f"soak-{index}.jpg", data, "image/jpeg")}
            headers = {"Idempotency-Key": f"soak-{run_id}-{index}"}
            for _ in range(1 + TRANSPORT_RETRIES):
                try:
                    return await client.post("/upload", files=files, headers=headers)
                except httpx.TransportError as exc:
                    result.transport_errors[f"{type(exc).__name__}({str(exc)[:60]})"] += 1
            result.given_up += 1
            return None

        async def sender() -> None:
            for index in remaining:
                if time.monotonic() > deadline:
                    return
                response = await send(index)
                if response is None:
                    continue
                result.statuses[response.status_code] += 1
                if response.status_code == 200:
                    result.task_ids.add(response.json()["task_id"])
                    result.replayed += response.headers.get("Idempotent-Replayed") == "true"

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - started
    return result


async def database_counts(engine: AsyncEngine) -> tuple[int, int]:
    """(rows, rows not final) of the whole throwaway database: every row is one of ours, including any
    whose upload answer the client never read (a transport error after the commit)."""
    async with engine.connect() as connection:
        rows = await connection.scalar(select(func.count()).select_from(ImageTask))
        open_rows = await connection.scalar(
            select(func.count()).select_from(ImageTask).where(ImageTask.status.not_in(FINAL))
        )
    return rows or 0, open_rows or 0


async def chaos_until_final(
    api: subprocess.Popen,
    workers: Workers,
    engine: AsyncEngine,
    uploading: asyncio.Task,
    kill_every: float,
    deadline: float,
) -> None:
    """Kill and restart a worker every `kill_every` s while uploads run and until all tasks are final."""
    next_kill = time.monotonic() + kill_every
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if api.poll() is not None:
            raise RuntimeError(f"the API exited with code {api.returncode} (see api.log; run with --keep)")
        if time.monotonic() >= next_kill:
            await asyncio.to_thread(workers.kill_and_restart)
            next_kill += kill_every
        if uploading.done() and (await database_counts(engine))[1] == 0:
            return


@dataclass
class Outcome:
    done: int = 0
    failed: int = 0
    not_final: int = 0
    done_without_output: int = 0
    retried: int = 0
    rows: int = 0  # in the database, accepted or not as far as the client knows
    open_rows: int = 0
    duplicates: int = 0
    renders_recorded: int = 0
    partial_files: int = 0
    server_errors: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def lost(self) -> int:
        return max(self.not_final, self.open_rows) + self.done_without_output


async def check_outcome(base_url: str, task_ids: list[int]) -> Outcome:
    """What users see, through the API: every task's status and, when done, its served output."""
    outcome = Outcome()
    pending = iter(task_ids)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def checker() -> None:
            for task_id in pending:
                status = await client.get(f"/status/{task_id}")
                if status.status_code >= 500:
                    outcome.server_errors += 1
                    continue
                body = status.json()
                if body["attempts"] > 1:
                    outcome.retried += 1
                if body["status"] == "failed":
                    outcome.failed += 1
                    outcome.errors[body["error"]] += 1
                elif body["status"] != "done":
                    outcome.not_final += 1
                else:
                    outcome.done += 1
                    served = await client.get(body["processed_url"]) if body["processed_url"] else None
                    if served is not None and served.status_code >= 500:
                        outcome.server_errors += 1
                    if served is None or served.status_code != 200 or not served.content:
                        outcome.done_without_output += 1

        await asyncio.gather(*(checker() for _ in range(16)))

    return outcome


_RECORDED_RENDER = re.compile(r"task (\d+) (?:done:|was finished elsewhere)")


def count_renders(workers_log: Path, processed_dir: Path, outcome: Outcome) -> None:
    """Duplicates are renders of one task that both completed and were recorded (each logs a line):
    output files cannot tell, since a second render replaces the first under the same name."""
    renders = collections.Counter(_RECORDED_RENDER.findall(workers_log.read_text(errors="replace")))
    outcome.duplicates = sum(count - 1 for count in renders.values() if count > 1)
    outcome.renders_recorded = sum(renders.values())
    names = [path.name for path in processed_dir.iterdir()]
    outcome.partial_files = sum(1 for name in names if name.startswith(".partial-"))


def report(
    args: argparse.Namespace,
    env: dict[str, str],
    uploads: Uploads,
    outcome: Outcome,
    workers: Workers,
    exit_codes: list[int | None],
    elapsed: float,
) -> None:
    defaults = {"WORKER_CONCURRENCY": f"{os.cpu_count()} (CPU count)"}
    shown = ", ".join(f"{name}={env.get(name, defaults.get(name))}" for name in SHOWN_SETTINGS)
    print(
        f"\nSoak: {args.uploads} uploads of a 600×450 JPEG, {args.concurrency} at once, {args.workers} "
        f"worker processes, one SIGKILLed and restarted every {args.kill_every:g} s (taking turns).\n"
        f"Settings: {shown}.\n"
    )
    rows = [
        ("accepted (200)", f"{len(uploads.task_ids):,}"),
        ("tasks in the database (of which not final)", f"{outcome.rows:,} ({outcome.open_rows:,})"),
        ("done", f"{outcome.done:,}"),
        ("failed", f"{outcome.failed:,}"),
        ("lost (not final, or done without output) — must be 0", f"{outcome.lost:,}"),
        (
            "renders recorded in the workers' logs (≥ done, or the count below means nothing)",
            f"{outcome.renders_recorded:,}",
        ),
        ("duplicates (a task rendered and recorded twice) — must be 0", f"{outcome.duplicates:,}"),
        ("5xx responses — must be 0", f"{uploads.server_errors + outcome.server_errors:,}"),
        (
            "other upload answers",
            ", ".join(f"{s}: {n}" for s, n in uploads.statuses.items() if s != 200) or "none",
        ),
        (
            "transport errors (retried with the same Idempotency-Key)",
            ", ".join(f"{k}: {n}" for k, n in uploads.transport_errors.items()) or "none",
        ),
        (
            "retries answered with an existing task / uploads given up",
            f"{uploads.replayed} / {uploads.given_up}",
        ),
        ("tasks that took more than one attempt", f"{outcome.retried:,}"),
        ("workers SIGKILLed / died on their own", f"{workers.kills} / {workers.unexpected_exits}"),
        ("worker exit codes at the end (SIGTERM)", ", ".join(str(code) for code in exit_codes)),
        ("temporary .partial-* files left", f"{outcome.partial_files}"),
        (
            "upload phase",
            f"{uploads.elapsed:.1f} s ({len(uploads.task_ids) / max(uploads.elapsed, 1e-9):.0f} uploads/s)",
        ),
        ("elapsed (first upload → every task final)", f"{elapsed:.1f} s"),
        ("images/s (final tasks / elapsed)", f"{(outcome.done + outcome.failed) / max(elapsed, 1e-9):.1f}"),
    ]
    sent = sum(uploads.statuses.values()) + uploads.given_up
    if outcome.open_rows or sent < args.uploads:
        rows.append(("hard stop", f"reached --max-seconds {args.max_seconds:g} before every task was final"))
    print("| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for error, count in outcome.errors.most_common(5):
        print(f"\nfailed ×{count}: {error}")


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same way out as Ctrl-C, through every `finally` below.
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard stop for the whole run")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, files)")
    args = parser.parse_args()
    if args.uploads < 1 or args.concurrency < 1 or args.workers < 1 or args.kill_every <= 0:
        parser.error("--uploads, --concurrency, --workers and --kill-every must be positive")
    signal.signal(signal.SIGTERM, _interrupt)

    deadline = time.monotonic() + args.max_seconds
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-soak-"))
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    api: subprocess.Popen | None = None
    workers: Workers | None = None
    try:
        servers.start()
        migrate(servers.postgres.url())
        env = bench_environment(servers, workdir, **SOAK_SETTINGS)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        api = start_api(env, port, log_file=workdir / "api.log")
        wait_until_ready(base_url, timeout=60, process=api)
        workers = Workers(env, workdir)
        workers.start(args.workers)
        data = images.jpeg(600, 450)

        async def soak() -> tuple[Uploads, float, int, int]:
            engine = make_engine(servers.postgres.url(), pool_size=1)
            try:
                started = time.perf_counter()
                uploading = asyncio.create_task(
                    upload_all(base_url, data, args.uploads, args.concurrency, deadline)
                )
                await chaos_until_final(api, workers, engine, uploading, args.kill_every, deadline)
                uploads = await uploading
                elapsed = time.perf_counter() - started
                rows, open_rows = await database_counts(engine)
                return uploads, elapsed, rows, open_rows
            finally:
                await engine.dispose()

        uploads, elapsed, rows, open_rows = asyncio.run(soak())
        exit_codes = workers.stop_all()
        outcome = asyncio.run(check_outcome(base_url, sorted(uploads.task_ids)))
        outcome.rows, outcome.open_rows = rows, open_rows
        count_renders(workdir / "workers.log", workdir / "processed", outcome)
        report(args, env, uploads, outcome, workers, exit_codes, elapsed)
        if args.keep:
            print(f"\nwork folder kept: {workdir}")
        bad = outcome.lost or outcome.duplicates or uploads.server_errors or outcome.server_errors
        return 1 if bad or any(code != 0 for code in exit_codes) else 0
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        if workers is not None:
            workers.kill_all()
        if api is not None:
            stop_process(api)
        servers.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
