"""The worker's render lanes (worker/lanes.py): WORKER_CONCURRENCY regular ones for every light
render, below the urgent ones in CPU priority, and urgent ones that only an interactive render
takes, when the regular ones are busy. In the worker's own pool (worker/pool.py), with renders that
hold their thread until told to end."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator

import pytest

from tests.waiting import eventually
from worker.lanes import REGULAR, URGENT, Lane, Lanes
from worker.pool import REGULAR_NICENESS, RenderPool


class Renders:
    """Renders that run until released, counting how many run at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.release = threading.Event()

    def render(self, name: str) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.release.wait(30), "never released"
            return name
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def taken() -> list[Lane]:
    """The lanes the pool's renders took, in turn."""
    return []


@pytest.fixture
async def pool(taken: list[Lane]) -> AsyncIterator[RenderPool]:
    """One regular lane and one urgent lane, in threads."""
    pool = RenderPool("threads", 1, max_pixels=1_000_000, urgent_lanes=1, on_lane=taken.append)
    try:
        yield pool
    finally:
        pool.shutdown()


async def test_bulk_renders_never_take_the_urgent_lane(pool: RenderPool, taken: list[Lane]) -> None:
    renders = Renders()
    started = [asyncio.create_task(pool.run(renders.render, f"bulk-{n}")) for n in range(4)]

    async def one_running() -> bool:
        return renders.running == 1

    await eventually(one_running, timeout=10, what="the first bulk render running")
    assert renders.running == 1, "the urgent lane stays free"
    renders.release.set()
    assert await asyncio.gather(*started) == [f"bulk-{n}" for n in range(4)]
    assert renders.most == 1
    assert taken == [REGULAR] * 4


async def test_an_interactive_render_takes_the_urgent_lane_while_the_regular_ones_are_busy(
    pool: RenderPool, taken: list[Lane]
) -> None:
    renders = Renders()
    bulk = [asyncio.create_task(pool.run(renders.render, f"bulk-{n}")) for n in range(3)]

    async def running(count: int) -> bool:
        return renders.running == count

    await eventually(lambda: running(1), timeout=10, what="a bulk render running")
    urgent = asyncio.create_task(pool.run(renders.render, "urgent", urgent=True))
    # Beside the bulk render, ahead of the two bulk ones that waited longer.
    await eventually(lambda: running(2), timeout=10, what="the interactive render beside the bulk one")
    renders.release.set()
    assert await urgent == "urgent"
    await asyncio.gather(*bulk)
    assert renders.most == 2
    assert taken[:2] == [REGULAR, URGENT]


async def test_an_interactive_render_takes_a_free_regular_lane_first() -> None:
    lanes = Lanes(2, 1)
    async with lanes.taken(urgent=False) as first, lanes.taken(urgent=True) as second:
        assert (first, second) == (REGULAR, REGULAR)
        async with lanes.taken(urgent=True) as third:
            assert third == URGENT


async def test_a_freed_urgent_lane_goes_to_a_waiting_interactive_render_and_never_to_bulk() -> None:
    lanes = Lanes(1, 1)
    order: list[tuple[str, Lane]] = []
    hold_regular, hold_urgent = asyncio.Event(), asyncio.Event()

    async def render(name: str, *, urgent: bool, hold: asyncio.Event | None = None) -> None:
        async with lanes.taken(urgent=urgent) as lane:
            order.append((name, lane))
            if hold is not None:
                await hold.wait()

    regular = asyncio.create_task(render("bulk-1", urgent=False, hold=hold_regular))
    urgent = asyncio.create_task(render("urgent-1", urgent=True, hold=hold_urgent))
    await asyncio.sleep(0)
    waiting = [
        asyncio.create_task(render("bulk-2", urgent=False)),
        asyncio.create_task(render("urgent-2", urgent=True)),
    ]
    await asyncio.sleep(0)
    hold_urgent.set()  # the urgent lane frees: urgent-2 takes it, bulk-2 waits on
    await urgent
    await asyncio.sleep(0)
    assert ("urgent-2", URGENT) in order and not [name for name, _ in order if name == "bulk-2"]
    hold_regular.set()
    await asyncio.gather(regular, *waiting)
    assert order == [("bulk-1", REGULAR), ("urgent-1", URGENT), ("urgent-2", URGENT), ("bulk-2", REGULAR)]


async def test_a_render_cancelled_while_waiting_leaves_the_line_and_a_lane_handed_to_it_goes_on() -> None:
    lanes = Lanes(1, 0)
    hold = asyncio.Event()

    async def render(name: str, done: list[str]) -> None:
        async with lanes.taken(urgent=False):
            await hold.wait()
            done.append(name)

    done: list[str] = []
    first = asyncio.create_task(render("first", done))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(render("cancelled", done))
    last = asyncio.create_task(render("last", done))
    await asyncio.sleep(0)
    cancelled.cancel()
    hold.set()
    await asyncio.gather(first, last)
    assert cancelled.cancelled() and done == ["first", "last"]
    # Every lane back: a new render takes one at once.
    async with asyncio.timeout(1), lanes.taken(urgent=False) as lane:
        assert lane == REGULAR


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_regular_lanes_run_below_the_urgent_ones_in_cpu_priority(pool: RenderPool) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    renders = Renders()
    bulk = asyncio.create_task(pool.run(renders.render, "bulk"))

    async def running() -> bool:
        return renders.running == 1

    await eventually(running, timeout=10, what="a bulk render in the regular lane")
    in_urgent_lane = await pool.run(_niceness, urgent=True)
    renders.release.set()
    await bulk
    assert (await pool.run(_niceness), in_urgent_lane) == (base + REGULAR_NICENESS, base)


async def test_without_urgent_lanes_renders_keep_the_workers_cpu_priority() -> None:
    pool = RenderPool("threads", 2, max_pixels=1_000_000)
    try:
        assert await pool.run(_niceness) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        pool.shutdown()
