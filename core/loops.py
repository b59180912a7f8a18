"""Background loops: waiting that a stop event cuts short, retrying, and a shutdown that ends.

Every loop of the API and the worker runs until its stop event is set, checked between passes,
and waits on that event instead of sleeping. Cancellation alone is not enough: on Python 3.11,
`asyncio.wait_for` (which nats-py's requests use) returns the awaited result instead of raising
when a cancel arrives just as the result does, so a `while True` loop cancelled there goes on for
ever (seen as an API whose shutdown hung on its outbox relay). The event ends a loop at its next
check whatever happened to the cancel; `Background.close` still cancels what outlives its grace,
and gives up waiting after a bound, saying so, so SIGTERM always ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Long enough for a pass under way to finish (a NATS request times out within 5 s); the cancel
# that follows is waited for as long again before the task is abandoned.
STOP_GRACE_SECONDS = 5.0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set meanwhile; True once it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def retry(
    attempt: Callable[[], Awaitable[T]], *, stop: asyncio.Event, pause: Callable[[Exception], float]
) -> T | None:
    """`attempt()` until it returns; None if `stop` is set first.

    After a failure, `pause(exc)` says how many seconds to wait before the next try (and logs why),
    or raises to give up.
    """
    while not stop.is_set():
        try:
            return await attempt()
        except Exception as exc:
            seconds = pause(exc)
        await wait_or_stop(stop, seconds)
    return None


async def every(
    seconds: float, step: Callable[[], Awaitable[object]], *, stop: asyncio.Event, what: str
) -> None:
    """Run `step` now and then every `seconds` until `stop` is set. A failing pass is logged and
    the next one comes as planned: an outage must not end the loop."""
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            log.warning("%s pass failed, will retry: %s", what, exc)
        await wait_or_stop(stop, seconds)


async def bounded(work: Awaitable[object], seconds: float, what: str) -> None:
    """Await `work` for `seconds` at most (a close or drain that waits on a server that does not
    answer); past that it is cancelled and left behind, with a log line. Its failures are logged."""
    task = asyncio.ensure_future(work)
    await _stop_tasks({task}, seconds, what)


class Background:
    """The loops one owner starts, with one stop event, and their bounded shutdown."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, object], *, name: str) -> None:
        """Run `work` (a loop that returns once `self.stop` is set) until close()."""
        self._tasks.add(asyncio.create_task(work, name=name))

    async def close(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Set the stop event and wait `grace` seconds for the loops to return; cancel what is
        left and wait `grace` more; then give up on what still runs, saying so."""
        self.stop.set()
        tasks, self._tasks = self._tasks, set()
        await _stop_tasks(tasks, grace, self._what)


async def _stop_tasks(tasks: set[asyncio.Task[Any]], grace: float, what: str) -> None:
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=grace)
    if pending:
        log.warning("%s: %s still running %.0f s after the stop; cancelling", what, _names(pending), grace)
        for task in pending:
            task.cancel()
        cancelled, pending = await asyncio.wait(pending, timeout=grace)
        done |= cancelled
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: %s ended with an error: %s", what, task.get_name(), task.exception())
    if pending:
        # Abandoned: the process is shutting down, and waiting longer would hang it.
        log.error("%s: %s did not stop after a cancel; giving up on it", what, _names(pending))


def _names(tasks: set[asyncio.Task[Any]]) -> str:
    return ", ".join(sorted(task.get_name() for task in tasks))
