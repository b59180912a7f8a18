"""The suite's throwaway system: PostgreSQL, NATS, API and worker processes, all on 127.0.0.1.

Built on devstack (the same processes, started the same way as `make run` and the tests), plus what
a benchmark needs between scenarios: emptying the table, the stream and the folders without a
restart, and reading the rows' own timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import nats
from nats.js.errors import NotFoundError

from core import queue
from devstack.servers import free_port
from devstack.stack import (
    PROJECT_ROOT,
    LocalServers,
    migrate,
    start_api,
    start_worker,
    stop_process,
    wait_until_ready,
)

# WARNING: the workers' per-task INFO lines would cost them time that no deployment logs at that rate.
# Several workers on this host: one default metrics port cannot serve them all (the second would
# exit at start-up), and the benchmarks do not scrape them.
BENCH_SETTINGS = {"LOG_LEVEL": "WARNING", "WORKER_METRICS_PORT": "0"}


def bench_environment(servers: LocalServers, workdir: Path, **overrides: str) -> dict[str, str]:
    """The processes' settings for a benchmark on `servers`: folders in `workdir`, BENCH_SETTINGS,
    then `overrides`."""
    return servers.environment(
        UPLOADS_DIR=str(workdir / "uploads"),
        PROCESSED_DIR=str(workdir / "processed"),
        **{**BENCH_SETTINGS, **overrides},
    )


@dataclass
class Api:
    process: subprocess.Popen
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class BenchStack:
    workdir: Path
    uvicorn_args: Sequence[str] = ()
    servers: LocalServers = field(init=False)
    env: dict[str, str] = field(init=False, default_factory=dict)
    _db: asyncpg.Connection | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.servers = LocalServers(self.workdir / "servers", nats_port=free_port())

    @property
    def uploads(self) -> Path:
        return self.workdir / "uploads"

    @property
    def processed(self) -> Path:
        return self.workdir / "processed"

    @property
    def nats_binary(self) -> Path | None:
        found = shutil.which("nats-server", path=str(Path(__import__("sys").executable).parent))
        return Path(found) if found else None

    async def start(self) -> None:
        await asyncio.to_thread(self.servers.start)
        await asyncio.to_thread(migrate, self.servers.postgres.url())
        self.env = bench_environment(self.servers, self.workdir)
        self._db = await asyncpg.connect(
            user="postgres", database="imagequeue", host=str(self.servers.postgres.socket_dir)
        )

    async def stop(self) -> None:
        if self._db is not None:
            await self._db.close()
        await asyncio.to_thread(self.servers.stop)

    @property
    def db(self) -> asyncpg.Connection:
        assert self._db is not None, "start() first"
        return self._db

    def postmaster_pid(self) -> int | None:
        pid_file = self.workdir / "servers" / "postgres" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pid_file.read_text().split()[0])
        return None

    def nats_pid(self) -> int | None:
        process = self.servers.nats._process
        return process.pid if process is not None else None

    async def sessions_opened(self) -> int:
        """Sessions PostgreSQL has counted for the database so far (pg_stat_database, at their end)."""
        await self.db.execute("SELECT pg_stat_clear_snapshot()")
        value = await self.db.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(value or 0)

    async def postgres_version(self) -> str:
        return str(await self.db.fetchval("SHOW server_version"))

    async def empty(self) -> None:
        """No rows, no messages, no files: the next measurement starts from the same state."""
        # Ids keep counting: a reused id would be dropped as a duplicate by JetStream (Nats-Msg-Id).
        await self.db.execute("TRUNCATE image_tasks")
        connection = await nats.connect(self.servers.nats.url)
        try:
            with contextlib.suppress(NotFoundError):
                await connection.jetstream().purge_stream(queue.STREAM)
        finally:
            await connection.close()
        for folder in (self.uploads, self.processed):
            self.set_aside(folder)

    def set_aside(self, folder: Path) -> None:
        """Empty `folder` by moving its files out of the way, into the work folder's `set-aside`,
        removed with the work folder when the bench ends. Not deleted now: on this machine's ext4
        (no journal), creating a file scans past every inode freed in the last 30 s, so deleting the
        last run's 3,000 files would add 0.3 ms of system CPU to each upload of the next run, for
        whichever design came next (BENCHMARKS.md, "One thread puts uploads in place")."""
        if folder.exists():
            trash = self.workdir / "set-aside"
            trash.mkdir(exist_ok=True)
            folder.rename(trash / uuid.uuid4().hex)
        folder.mkdir(parents=True)

    @contextlib.asynccontextmanager
    async def api(
        self,
        *,
        app: str = "api.main:app",
        name: str = "api",
        env: dict[str, str] | None = None,
        root: Path = PROJECT_ROOT,
        uvicorn_args: Sequence[str] | None = None,
    ) -> AsyncIterator[Api]:
        port = free_port()
        process = start_api(
            {**self.env, **(env or {})},
            port,
            log_file=self.workdir / f"{name}.log",
            app=app,
            extra_args=self.uvicorn_args if uvicorn_args is None else uvicorn_args,
            root=root,
        )
        api = Api(process, port)
        try:
            ready_path = "/ready" if app == "api.main:app" else None
            if ready_path:
                await asyncio.to_thread(wait_until_ready, api.base_url, timeout=60, process=process)
            else:
                await asyncio.to_thread(_wait_for_docs, api.base_url, process)
            yield api
        finally:
            await asyncio.to_thread(stop_process, process)

    @contextlib.asynccontextmanager
    async def workers(
        self, count: int, *, env: dict[str, str] | None = None, root: Path = PROJECT_ROOT
    ) -> AsyncIterator[list[int]]:
        """`count` worker processes, yielded once each is fetching (its heartbeat file exists)."""
        processes: list[subprocess.Popen] = []
        beats = [self.workdir / f"worker-{index}.alive" for index in range(count)]
        try:
            for beat in beats:
                beat.unlink(missing_ok=True)
                worker_env = {**self.env, **(env or {}), "WORKER_HEARTBEAT_FILE": str(beat)}
                processes.append(start_worker(worker_env, log_file=self.workdir / "workers.log", root=root))
            deadline = time.monotonic() + 60
            while not all(beat.exists() for beat in beats):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError("a worker did not start (see workers.log)")
                await asyncio.sleep(0.01)
            yield [process.pid for process in processes]
        finally:
            for process in processes:
                await asyncio.to_thread(stop_process, process)

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetch("SELECT status, count(*) AS n FROM image_tasks GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    async def wait_final(self, expected: int, *, within: float, poll: float = 0.05) -> dict[str, int]:
        """Wait until `expected` rows are done or failed; returns the counts. Raises TimeoutError,
        with the counts seen last, after `within` seconds: a drain that did not end is no figure
        (its idle time's CPU over the few images done would read as a cost per image)."""
        deadline = time.monotonic() + within
        while True:
            counts = await self.counts()
            final = counts.get("done", 0) + counts.get("failed", 0)
            if final >= expected:
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{final} of {expected} tasks done or failed within {within:g} s; by status: {counts}"
                )
            await asyncio.sleep(poll)

    async def unqueued(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM image_tasks WHERE queued_at IS NULL"))


def _wait_for_docs(base_url: str, process: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{base_url} exited with code {process.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{base_url} did not start within 60 s")
