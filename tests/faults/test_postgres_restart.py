"""PostgreSQL restarted during a burst: uploads meanwhile are refused with the documented 503 and
leave no file behind; every upload accepted before or after is processed once.

A real shutdown is not instantaneous: between the signal and the server's exit PostgreSQL refuses
new connections with "the database system is shutting down" (and refuses them with "starting up"
on the way back). With `pg_ctl stop -m fast` that window lasts a checkpoint, which a burst hits
only some of the time; here a last client keeps the server in it (smart shutdown, every other
session terminated as fast mode would) while five uploads arrive, then leaves and lets it finish.
The burst runs once, in a module fixture, and each test below judges one promise about it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from api.main import DATABASE_UNAVAILABLE
from core.db import make_engine, make_sessionmaker
from devstack.stack import LocalServers, start_worker, stop_process
from tests.faults.burst import Burst, Outcome, new_prefix
from tests.faults.outcome import (
    all_input_names,
    assert_processed_once,
    stored_files,
    wait_until_done,
    wait_until_settled,
)
from tests.faults.processes import Started, worker_ready
from tests.waiting import eventually


def plain_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def refuses_new_connections(dsn: str, *, timeout: float = 15) -> None:
    async def refusing() -> bool:
        try:
            connection = await asyncpg.connect(dsn, timeout=2)
        except asyncpg.CannotConnectNowError:
            return True
        await connection.close()
        return False

    await eventually(
        refusing, timeout=timeout, what="PostgreSQL refusing new connections after the stop signal"
    )


@asynccontextmanager
async def shutting_down(servers: LocalServers, dsn: str) -> AsyncIterator[None]:
    """PostgreSQL in its shutdown window inside the block, stopped after it (not restarted)."""
    last_client = await asyncpg.connect(dsn)
    stopping = asyncio.create_task(asyncio.to_thread(servers.postgres.stop, mode="smart"))
    terminate_the_others = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    try:
        await refuses_new_connections(dsn)
        # As fast mode does; the API's and the worker's pooled connections are gone from here on.
        await last_client.execute(terminate_the_others)
        yield
    finally:
        await last_client.execute(terminate_the_others)  # whatever happened, let the shutdown end
        await last_client.close()
        await stopping


@dataclass(frozen=True)
class Restart:
    """What a burst across one PostgreSQL restart left: every upload's outcome, and what was on disk."""

    prefix: str
    outcomes: list[Outcome]
    accepted: set[int]
    files_without_row_before: set[str]
    # What the API logged during the burst: the traceback behind an unexpected answer, which is
    # gone with the suite's work directory once the run ends.
    api_log: str


async def files_without_row(database_url: str, uploads_dir: Path) -> set[str]:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            return stored_files(uploads_dir) - await all_input_names(session)
    finally:
        await engine.dispose()


async def burst_across_a_restart(
    servers: LocalServers, stack_env: dict[str, str], base_url: str, worker: Started, api_log: Path
) -> Restart:
    prefix = new_prefix("postgres-restart")
    api_log_start = api_log.stat().st_size
    uploads_dir = Path(stack_env["UPLOADS_DIR"])
    dsn = plain_dsn(stack_env["DATABASE_URL"])
    await worker_ready(worker)
    before = await files_without_row(stack_env["DATABASE_URL"], uploads_dir)
    try:
        async with Burst(base_url, prefix) as burst:
            await burst.wait_for_more(10)
            async with shutting_down(servers, dsn):
                await burst.wait_for_more(5)
            await burst.wait_for_more(10)
            await asyncio.to_thread(servers.postgres.start)
            await burst.wait_for_more(10)
    finally:
        servers.postgres.start()  # no-op when it runs
    with api_log.open(errors="replace") as log:
        log.seek(api_log_start)
        logged = log.read()
    return Restart(prefix, burst.outcomes, burst.accepted, before, logged)


@pytest.fixture(scope="module")
def restart(
    servers: LocalServers, stack_env: dict[str, str], api_process: str, workdir: Path
) -> Iterator[Restart]:
    """One burst across one restart, with a worker running, shared by the tests that judge it. It
    runs on an event loop of its own: each test has its own loop, and this outlives them."""
    log_file = workdir / "fault-postgres-worker.log"
    worker = Started(start_worker(stack_env, log_file=log_file), log_file)
    try:
        with ThreadPoolExecutor(max_workers=1) as thread:
            yield thread.submit(
                asyncio.run,
                burst_across_a_restart(servers, stack_env, api_process, worker, workdir / "api.log"),
            ).result()
    finally:
        assert stop_process(worker.process) == 0, worker.log_tail()


def test_uploads_meeting_a_postgres_restart_are_answered_200_or_503_never_500(restart: Restart) -> None:
    unexpected = [outcome for outcome in restart.outcomes if outcome.status not in (200, 503)]
    assert unexpected == [], (
        f"{unexpected}\nthe API's log of the burst (last 20000 characters):\n{restart.api_log[-20000:]}"
    )


async def test_uploads_refused_during_a_postgres_restart_say_so_and_leave_no_file(
    restart: Restart, db: AsyncSession, uploads_dir: Path
) -> None:
    refusals = [outcome for outcome in restart.outcomes if outcome.status == 503]
    assert refusals, "no upload reached the API while PostgreSQL was down"
    assert all(outcome.body == {"detail": DATABASE_UNAVAILABLE} for outcome in refusals), refusals
    files_without_row = stored_files(uploads_dir) - await all_input_names(db)
    assert files_without_row - restart.files_without_row_before == set()


async def test_every_upload_accepted_across_a_postgres_restart_is_processed_once(
    restart: Restart, client: httpx.AsyncClient, db: AsyncSession, processed_dir: Path
) -> None:
    await wait_until_done(client, restart.accepted, timeout=30)
    rows = await wait_until_settled(db, restart.prefix, timeout=5)
    assert {row.id for row in rows} == restart.accepted, "a row exists for an upload that was not accepted"
    assert_processed_once(rows, processed_dir)
