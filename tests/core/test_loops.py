"""Background loops stop on their event, and their shutdown ends even when a cancel is lost.

On Python 3.11 `asyncio.wait_for` (under every nats-py request) swallows a cancel that arrives as
its result does; the step below swallows its cancel the same way, every time, so a loop that
relied on cancellation alone would run on (the API's shutdown hung so, waiting on its relay).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from core import loops


class SwallowsCancels:
    """A pass that takes `seconds` and, when cancelled, returns as if its request had answered."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passes = 0
        self.inside = asyncio.Event()

    async def step(self) -> None:
        self.passes += 1
        self.inside.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            return


async def test_a_loop_whose_pass_swallowed_the_cancel_still_stops_on_its_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    step = SwallowsCancels(seconds=3600)
    background = loops.Background("test loops")
    background.start(loops.every(0.01, step.step, stop=background.stop, what="test"), name="swallower")
    await asyncio.wait_for(step.inside.wait(), 5)
    task = next(task for task in asyncio.all_tasks() if task.get_name() == "swallower")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="core.loops"):
        await background.close(grace=0.2)

    assert time.monotonic() - started < 2
    assert task.done() and not task.cancelled(), "the loop returned by itself after the lost cancel"
    assert step.passes == 1
    assert "giving up" not in caplog.text


async def test_a_task_that_never_stops_is_given_up_after_the_bound_and_named_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        """Ignores its stop event and every cancel until the test releases it."""
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    background = loops.Background("test loops")
    background.start(deaf(), name="deaf-loop")
    await asyncio.sleep(0)
    task = next(task for task in asyncio.all_tasks() if task.get_name() == "deaf-loop")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="core.loops"):
        await background.close(grace=0.2)
    elapsed = time.monotonic() - started

    assert 0.4 <= elapsed < 2, "the stop grace, then as long again after the cancel, then no more"
    assert "deaf-loop did not stop after a cancel; giving up on it" in caplog.text
    release.set()
    await asyncio.wait_for(task, 5)


async def test_a_stopped_loop_waits_no_longer_between_passes() -> None:
    stop = asyncio.Event()
    passes = 0

    async def step() -> None:
        nonlocal passes
        passes += 1
        stop.set()

    started = time.monotonic()
    await asyncio.wait_for(loops.every(3600, step, stop=stop, what="test"), 5)
    assert passes == 1 and time.monotonic() - started < 2


async def test_a_failing_pass_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    passes = 0

    async def step() -> None:
        nonlocal passes
        passes += 1
        if passes == 3:
            stop.set()
        raise ConnectionError("the database went away")

    with caplog.at_level(logging.WARNING, logger="core.loops"):
        await asyncio.wait_for(loops.every(0.01, step, stop=stop, what="test sweep"), 5)
    assert passes == 3
    assert "test sweep pass failed, will retry: the database went away" in caplog.text


async def test_retry_tries_again_after_the_pause_it_is_told_and_returns_the_result() -> None:
    failures = [ConnectionError("refused"), TimeoutError("slow")]
    seen: list[Exception] = []

    async def attempt() -> str:
        if failures:
            raise failures.pop(0)
        return "connected"

    def pause(exc: Exception) -> float:
        seen.append(exc)
        return 0.01

    assert await loops.retry(attempt, stop=asyncio.Event(), pause=pause) == "connected"
    assert [type(exc) for exc in seen] == [ConnectionError, TimeoutError]


async def test_retry_gives_up_when_the_pause_raises_and_returns_none_once_stopped() -> None:
    async def attempt() -> str:
        raise ValueError("refused for good")

    def give_up(exc: Exception) -> float:
        raise exc

    with pytest.raises(ValueError, match="refused for good"):
        await loops.retry(attempt, stop=asyncio.Event(), pause=give_up)

    stop = asyncio.Event()

    def stop_then_wait(exc: Exception) -> float:
        stop.set()
        return 3600

    started = time.monotonic()
    assert await loops.retry(attempt, stop=stop, pause=stop_then_wait) is None
    assert time.monotonic() - started < 2


async def test_bounded_work_that_does_not_end_is_cancelled_at_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="core.loops"):
        await loops.bounded(never.wait(), 0.2, "a drain")
    assert time.monotonic() - started < 2
    assert "a drain:" in caplog.text and "cancelling" in caplog.text
