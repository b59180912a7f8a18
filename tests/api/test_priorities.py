"""Priorities and fair dequeue (api/dispatcher.py) on a stack of their own: the window's bounds are
about every task in the database and the stream, so this module runs its API and worker on a
database and a NATS server that no other test writes to.

The window is 4 and the worker renders one image at a time (holding two messages), so the bounds
asserted are small numbers whatever the machine's speed: a task that jumps a backlog waits for the
window, not for the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import nats
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.intake import BAD_PRIORITY
from core import queue
from core.models import ImageTask
from devstack.servers import LocalNats, free_port
from devstack.stack import (
    LocalServers,
    migrate,
    running_api,
    start_api,
    start_worker,
    stop_process,
    wait_until_ready,
)
from tests.database import session_on
from tests.images import jpeg, photo_like
from tests.waiting import eventually

WINDOW = 4
# What the one worker holds at once (WORKER_CONCURRENCY 1 x worker.PIPELINE_DEPTH, and one for its
# urgent lane: worker.__main__.messages_held): messages it took together are processed side by side,
# in any order.
HELD = 3
KEY_A = "fairshare-key-a-0123456789"
KEY_B = "fairshare-key-b-0123456789"
# An API_KEYS entry as an object: its uploads are `bulk` unless they say otherwise.
KEY_C = "fairshare-key-c-0123456789"
# Slow enough (a blur over a 1200x900 photo) that a backlog lasts while the test looks at it.
SLOW_OPS = json.dumps([{"op": "blur", "radius": 6}, {"op": "resize", "width": 1000}])
UPLOADS_AT_ONCE = 8


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    workdir: Path
    nats_url: str


@contextlib.contextmanager
def own_stack(
    servers: LocalServers, stack_env: dict[str, str], workdir: Path, name: str, **settings: str
) -> Iterator[Stack]:
    """A database and a NATS server of their own, named `name`, and the environment to reach them
    with these settings."""
    home = workdir / name
    database = f"imagequeue_{name}"
    servers.postgres.psql(f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database};")
    database_url = servers.postgres.url(database)
    migrate(database_url)
    nats_server = LocalNats(home / "nats", free_port(), log_file=workdir / f"{name}-nats.log")
    nats_server.start()
    env = {
        **stack_env,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_server.url,
        "UPLOADS_DIR": str(home / "uploads"),
        "PROCESSED_DIR": str(home / "processed"),
        **settings,
    }
    try:
        yield Stack(env, workdir, nats_server.url)
    finally:
        nats_server.stop()


@pytest.fixture(scope="module")
def stack(servers: LocalServers, stack_env: dict[str, str], workdir: Path) -> Iterator[Stack]:
    with own_stack(
        servers,
        stack_env,
        workdir,
        "priorities",
        DISPATCH_WINDOW=str(WINDOW),
        API_KEYS=json.dumps([KEY_A, KEY_B, {"key": KEY_C, "priority": "bulk"}]),
        WORKER_CONCURRENCY="1",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> Iterator[str]:
    with running_api(stack.env, log_file=stack.workdir / "priorities-api.log") as url:
        yield url


@contextlib.asynccontextmanager
async def running_worker(env: dict[str, str], *, log_file: Path) -> AsyncIterator[None]:
    """A worker for the block, stopped (SIGTERM, then its exit awaited) without blocking the loop."""
    process = start_worker(env, log_file=log_file)
    try:

        async def ready() -> bool:
            assert process.poll() is None, log_file.read_text(errors="replace")[-3000:]
            return log_file.exists() and "worker ready" in log_file.read_text(errors="replace")

        # Ready before it may be stopped: a SIGTERM before its handler is installed kills it.
        await eventually(ready, timeout=60, what=f"'worker ready' in {log_file}")
        yield
    finally:
        code = await asyncio.to_thread(stop_process, process)
        assert code == 0, log_file.read_text(errors="replace")[-3000:]


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[AsyncSession]:
    async with session_on(stack.env["DATABASE_URL"]) as session:
        yield session


async def _upload(client: httpx.AsyncClient, key: str, name: str, body: bytes, **fields: str) -> int:
    answer = await client.post(
        "/upload", files={"file": (name, body, "image/jpeg")}, data=fields, headers={"X-API-Key": key}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["task_id"]


async def _upload_many(
    client: httpx.AsyncClient, key: str, prefix: str, count: int, body: bytes, **fields: str
) -> list[int]:
    names = iter(range(count))
    ids: list[int] = []

    async def one_at_a_time() -> None:
        for number in names:
            ids.append(await _upload(client, key, f"{prefix}-{number}.jpg", body, **fields))

    await asyncio.gather(*(one_at_a_time() for _ in range(UPLOADS_AT_ONCE)))
    return ids


@dataclass(frozen=True)
class Row:
    id: int
    status: str
    attempts: int
    error: str | None
    upload_time: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    output_name: str | None


async def _rows(db: AsyncSession, ids: list[int]) -> list[Row]:
    """The rows, read fresh (plain values: no ORM object expires under the caller)."""
    columns = [getattr(ImageTask, name) for name in Row.__dataclass_fields__]
    try:
        return [Row(*row) for row in (await db.execute(select(*columns).where(ImageTask.id.in_(ids)))).all()]
    finally:
        await db.rollback()


async def _wait_done(db: AsyncSession, ids: list[int], *, timeout: float) -> list[Row]:
    rows: list[Row] = []

    async def all_done() -> bool:
        nonlocal rows
        rows = await _rows(db, ids)
        assert not [row for row in rows if row.status == "failed"], [row.error for row in rows]
        return len(rows) == len(ids) and all(row.status == "done" for row in rows)

    await eventually(all_done, timeout=timeout, what=lambda: f"{len(ids)} tasks done: {_statuses(rows)}")
    return rows


def _timeline(rows: list[Row]) -> str:
    """When each row was queued, started and finished, for a failed ordering assertion."""
    return "; ".join(
        f"{row.id}: queued {row.queued_at} started {row.started_at} finished {row.finished_at}"
        for row in rows
    )


def _statuses(rows: list[Row]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


async def _messages_in_stream(nats_url: str) -> int:
    connection = await nats.connect(nats_url)
    try:
        return (await connection.jetstream().stream_info(queue.STREAM)).state.messages
    finally:
        await connection.close()


async def _unfinished(db: AsyncSession) -> int:
    try:
        return (
            await db.scalar(select(func.count()).where(ImageTask.status.in_(("pending", "processing")))) or 0
        )
    finally:
        await db.rollback()


async def _drained(db: AsyncSession) -> None:
    async def nothing_left() -> bool:
        return await _unfinished(db) == 0

    await eventually(nothing_left, timeout=120, what="the previous test's tasks finished")


async def test_a_priority_that_is_not_one_is_refused_and_the_keys_default_applies_without_one(
    base_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        refused = await client.post(
            "/upload",
            files={"file": ("x.jpg", jpeg(32, 24), "image/jpeg")},
            data={"priority": "urgent"},
            headers={"X-API-Key": KEY_A},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"] == BAD_PRIORITY

        uploads = [
            (KEY_A, await _upload(client, KEY_A, "bulk.jpg", jpeg(32, 24), priority="bulk"), "bulk"),
            (KEY_A, await _upload(client, KEY_A, "plain.jpg", jpeg(32, 24)), "normal"),
            # The key's default, and the field over it.
            (KEY_C, await _upload(client, KEY_C, "by-key.jpg", jpeg(32, 24)), "bulk"),
            (
                KEY_C,
                await _upload(client, KEY_C, "urgent.jpg", jpeg(32, 24), priority="interactive"),
                "interactive",
            ),
        ]
        for key, task_id, expected in uploads:
            status = await client.get(f"/status/{task_id}", headers={"X-API-Key": key})
            assert status.json()["priority"] == expected


async def test_one_key_with_300_queued_delays_another_keys_upload_by_the_window_only(
    stack: Stack, base_url: str, db: AsyncSession
) -> None:
    async with running_worker(stack.env, log_file=stack.workdir / "priorities-drain.log"):
        await _drained(db)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        backlog = await _upload_many(client, KEY_A, "fair-a", 300, jpeg(64, 48))
        # No worker yet: the stream holds the window and not one task more; the rest wait in the table.
        assert await _messages_in_stream(stack.nats_url) == WINDOW
        single = await _upload(client, KEY_B, "fair-b.jpg", jpeg(64, 48))

    async with running_worker(stack.env, log_file=stack.workdir / "priorities-fair.log"):
        [b_row] = await _wait_done(db, [single], timeout=60)
        a_rows = await _rows(db, backlog)
        done_before = [row for row in a_rows if row.status == "done" and row.finished_at < b_row.finished_at]
        # Ahead of B: the window A filled before B uploaded, and what the worker took with B.
        assert len(done_before) <= WINDOW + HELD - 1, _timeline([b_row, *done_before])
        assert _statuses(a_rows).get("pending", 0) > 200, "A's backlog was still waiting"
        a_rows = await _wait_done(db, backlog, timeout=300)
    assert all(row.attempts == 1 for row in a_rows), "each task processed once"


async def test_an_interactive_upload_overtakes_a_bulk_backlog_while_the_worker_is_busy(
    stack: Stack, base_url: str, db: AsyncSession
) -> None:
    heavy = photo_like(1200, 900)
    async with (
        running_worker(stack.env, log_file=stack.workdir / "priorities-busy.log"),
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
    ):
        await _drained(db)
        backlog = await _upload_many(client, KEY_A, "busy-bulk", 40, heavy, ops=SLOW_OPS, priority="bulk")

        async def busy() -> bool:
            return _statuses(await _rows(db, backlog)).get("done", 0) >= 2

        await eventually(busy, timeout=60, what="the worker busy with the bulk backlog")
        # The same key: only the priority can put it ahead.
        urgent = await _upload(client, KEY_A, "busy-urgent.jpg", heavy, ops=SLOW_OPS, priority="interactive")
        [urgent_row] = await _wait_done(db, [urgent], timeout=60)
        bulk_rows = await _rows(db, backlog)
        overtaken = [
            row
            for row in bulk_rows
            if row.status != "done" or row.finished_at > urgent_row.finished_at  # type: ignore[operator]
        ]
        ran_between = [
            row
            for row in bulk_rows
            if row.status == "done" and urgent_row.upload_time < row.finished_at < urgent_row.finished_at  # type: ignore[operator]
        ]
        # Bulk tasks in the window when it arrived, at most: never the backlog behind them.
        assert len(ran_between) <= WINDOW + HELD - 1, _timeline([urgent_row, *ran_between])
        assert len(overtaken) >= 20, "the interactive task jumped the bulk backlog"
        await _wait_done(db, backlog, timeout=300)


async def test_no_task_is_lost_or_run_twice_when_the_api_is_killed_while_dispatching(
    stack: Stack, base_url: str, db: AsyncSession
) -> None:
    async with running_worker(stack.env, log_file=stack.workdir / "priorities-restart-drain.log"):
        await _drained(db)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        backlog = await _upload_many(client, KEY_B, "restart", 60, jpeg(64, 48), priority="bulk")
    port = free_port()
    second = f"http://127.0.0.1:{port}"
    log_file = stack.workdir / "priorities-second-api.log"
    # A second replica dispatches from the same table; it is killed mid-drain (SIGKILL: no shutdown).
    replica = start_api(stack.env, port, log_file=log_file)
    try:
        await asyncio.to_thread(wait_until_ready, second, timeout=60, process=replica)
        async with running_worker(stack.env, log_file=stack.workdir / "priorities-restart.log"):

            async def halfway() -> bool:
                return _statuses(await _rows(db, backlog)).get("done", 0) >= 20

            await eventually(halfway, timeout=120, what="a third of the backlog done")
            replica.kill()
            await asyncio.to_thread(replica.wait)
            replica = start_api(stack.env, port, log_file=log_file)
            await asyncio.to_thread(wait_until_ready, second, timeout=60, process=replica)
            rows = await _wait_done(db, backlog, timeout=300)
    finally:
        await asyncio.to_thread(stop_process, replica)
    assert sorted(row.id for row in rows) == sorted(backlog)
    assert all(row.attempts == 1 for row in rows), [
        (row.id, row.attempts) for row in rows if row.attempts != 1
    ]
    outputs = {row.output_name for row in rows}
    assert len(outputs) == len(rows) and all(
        (Path(stack.env["PROCESSED_DIR"]) / name).exists() for name in outputs
    )
