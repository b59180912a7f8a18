"""An interactive upload never waits for a bulk render to end (issue 18): the dispatcher lets it past a
full window (DISPATCH_URGENT_PLACES) and the worker renders it in its urgent lane
(WORKER_URGENT_LANES) beside the bulk renders; no bulk task ever takes that lane, nor does an
interactive render too large for it (worker.consumer.URGENT_RENDER_SHARE). Through a real
API, PostgreSQL, NATS and worker processes, on a database and NATS server of this module's own (the
window is about every task in them).

The window is the worker's renders, as the README advises: 2, with WORKER_CONCURRENCY=2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from devstack.servers import free_port
from devstack.stack import LocalServers, running_api
from tests.api.test_priorities import (
    Row,
    Stack,
    _drained,
    _rows,
    _statuses,
    _timeline,
    _upload,
    _wait_done,
    own_stack,
    running_worker,
)
from tests.database import session_on
from tests.images import jpeg, photo_like
from tests.waiting import eventually

KEY = "urgent-lane-key-0123456789"
# Light (66 M pixel-steps by core.processing.cost.render_pixels, under HEAVY_RENDER_PIXELS, so in
# the pool's lanes rather than the heavy lane) and slow: twenty blurs of a 3 MP photo, about 2 s
# of one core each, whatever else runs.
BULK_IMAGE = (2000, 1500)
SLOW_OPS = json.dumps([{"op": "blur", "radius": 20}] * 20)


@pytest.fixture(scope="module")
def stack(servers: LocalServers, stack_env: dict[str, str], workdir: Path) -> Iterator[Stack]:
    with own_stack(
        servers,
        stack_env,
        workdir,
        "urgent",
        DISPATCH_WINDOW="2",
        DISPATCH_URGENT_PLACES="1",
        WORKER_CONCURRENCY="2",
        WORKER_URGENT_LANES="1",
        API_KEYS=json.dumps([KEY]),
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> Iterator[str]:
    with running_api(stack.env, log_file=stack.workdir / "urgent-api.log") as url:
        yield url


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[AsyncSession]:
    async with session_on(stack.env["DATABASE_URL"]) as session:
        yield session


async def _renders_by_lane(metrics_port: int) -> dict[str, float]:
    """The worker's count of light renders by lane, from its /metrics."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("imagequeue_worker_renders_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('lane="')[1].split('"')[0]] = float(value)
    return counts


async def _upload_bulk(client: httpx.AsyncClient, count: int) -> list[int]:
    body = photo_like(*BULK_IMAGE)
    return [
        await _upload(client, KEY, f"bulk-{number}.jpg", body, ops=SLOW_OPS, priority="bulk")
        for number in range(count)
    ]


async def _both_lanes_busy(db: AsyncSession, backlog: list[int]) -> list[Row]:
    """Once two of `backlog` are processing (the worker's two regular lanes): those rows."""
    rendering: list[Row] = []

    async def busy() -> bool:
        nonlocal rendering
        rendering = [row for row in await _rows(db, backlog) if row.status == "processing"]
        return len(rendering) == 2

    await eventually(busy, timeout=60, what="two bulk renders processing")
    return rendering


async def test_an_interactive_upload_is_done_while_both_bulk_renders_are_still_processing(
    stack: Stack, base_url: str, db: AsyncSession
) -> None:
    port = free_port()
    env = {**stack.env, "WORKER_METRICS_PORT": str(port)}
    async with (
        running_worker(env, log_file=stack.workdir / "urgent-busy.log"),
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
    ):
        await _drained(db)
        backlog = await _upload_bulk(client, 4)
        rendering = await _both_lanes_busy(db, backlog)
        # The same key as the bulk work: only the priority can put it ahead.
        urgent = await _upload(client, KEY, "urgent.jpg", jpeg(640, 480), priority="interactive")
        [urgent_row] = await _wait_done(db, [urgent], timeout=60)
        bulk_rows = {row.id: row for row in await _rows(db, [row.id for row in rendering])}
        lanes = await _renders_by_lane(port)
        await _wait_done(db, backlog, timeout=300)

    for row in bulk_rows.values():
        assert row.started_at is not None and row.started_at < urgent_row.upload_time, _timeline(
            [urgent_row, *bulk_rows.values()]
        )
        # Still processing when the interactive task was done: it waited for neither render.
        assert row.finished_at is None or row.finished_at > urgent_row.finished_at, _timeline(  # type: ignore[operator]
            [urgent_row, *bulk_rows.values()]
        )
    assert lanes.get("urgent") == 1, lanes


async def test_a_bulk_task_never_runs_in_the_urgent_lane(
    stack: Stack, base_url: str, db: AsyncSession
) -> None:
    # One regular lane and one urgent lane, only bulk work: one render at a time, always regular.
    port = free_port()
    env = {**stack.env, "WORKER_METRICS_PORT": str(port), "WORKER_CONCURRENCY": "1"}
    async with (
        running_worker(env, log_file=stack.workdir / "urgent-bulk-only.log"),
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
    ):
        await _drained(db)
        body = jpeg(320, 240)
        backlog = await asyncio.gather(
            *(_upload(client, KEY, f"only-bulk-{number}.jpg", body, priority="bulk") for number in range(12))
        )
        # And slow ones, so renders would overlap if a second lane took them.
        backlog += await _upload_bulk(client, 3)
        rows = await _wait_done(db, backlog, timeout=300)
        lanes = await _renders_by_lane(port)

    assert _statuses(rows) == {"done": 15}
    assert lanes == {"regular": 15.0}, lanes


async def test_an_interactive_render_too_large_for_the_urgent_lane_waits_for_a_regular_one(
    stack: Stack, base_url: str, db: AsyncSession
) -> None:
    # A 12 MP photo's `default` render, 36 M pixel-steps: over a quarter of HEAVY_RENDER_PIXELS
    # (worker.consumer.URGENT_RENDER_SHARE), so it must not add its memory beside two regular lanes.
    port = free_port()
    env = {**stack.env, "WORKER_METRICS_PORT": str(port)}
    async with (
        running_worker(env, log_file=stack.workdir / "urgent-too-large.log"),
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
    ):
        await _drained(db)
        backlog = await _upload_bulk(client, 2)
        await _both_lanes_busy(db, backlog)
        large = await _upload(client, KEY, "large.jpg", jpeg(4000, 3000), priority="interactive")
        [large_row] = await _wait_done(db, [large], timeout=120)
        bulk_rows = await _rows(db, backlog)
        lanes = await _renders_by_lane(port)
        await _wait_done(db, backlog, timeout=300)

    assert "urgent" not in lanes, lanes
    # It rendered once a bulk render had ended and freed its regular lane.
    bulk_done = [row.finished_at for row in bulk_rows if row.finished_at is not None]
    assert bulk_done and large_row.finished_at > min(bulk_done), _timeline([large_row, *bulk_rows])  # type: ignore[operator]
