"""The dispatcher: which committed task goes into JetStream next, by priority and fairly between keys.

Every committed task waits in PostgreSQL (`queued_at IS NULL`: the outbox) until the dispatcher
publishes it. The stream holds at most DISPATCH_WINDOW tasks that are not final yet (published,
waiting there or being processed), and DISPATCH_URGENT_PLACES more for interactive ones (below); the
rest wait in the table, where their order can still change.
Each pass fills the free part of the window:

- by priority: `interactive` before `normal` before `bulk`. A task entering the stream is behind at
  most the window, whatever the backlog: with the window the size of the renders the workers run at once,
  an interactive upload waits for the images already being processed, not for 5,000 bulk ones.
- past a full window for urgent work: `interactive` tasks may take DISPATCH_URGENT_PLACES more
  places, so an urgent upload enters the stream at once, where a worker's urgent lane
  (WORKER_URGENT_LANES) renders it beside the bulk renders instead of after one of them. With the
  places at the number of workers, each worker has at most one such task to take.
- without starving anyone: while `normal` or `bulk` tasks wait, each class is owed a share of the
  window (LOWER_CLASS_SHARE, at least one task), granted before the strict order (past the window
  too, in the places interactive tasks hold), so a steady flow of interactive work slows bulk work
  down but never stops it.
- fairly between keys: within a priority, keys take turns, and a key that already has many tasks
  in the window goes after the others (core.tasks.next_waiting). A key that queued 10,000 images
  delays another key's single upload by at most the window.

A pass costs the window and the keys, not the backlog: it counts the window up to its size, and
reads only the keys that have tasks waiting and the oldest few of each (core/fair_order.py), so
100,000 waiting tasks cost a pass what 100 do (bench/dispatch_pass.py).

Passes run one at a time across every API replica (a PostgreSQL advisory lock held by the pass's
transaction), publish before they mark, and mark in the same transaction: a replica killed
mid-pass leaves its rows unmarked, and the next pass publishes them again under the same
`Nats-Msg-Id` (a copy JetStream drops), so nothing is lost and nothing runs twice.

With a window, an upload's request wakes its process's dispatcher and waits (bounded) for the pass
that sees its row, so when the window has room the task is in the stream by the time the answer is
sent, as before this module existed. Without one the request publishes its own task (`queue_new`):
passes then only pick up what a failed publish or a killed process left. A worker that lets go of a
message says so on plain NATS (queue.SETTLED_SUBJECT), which wakes every replica's dispatcher to
fill the freed place at once. That word can be lost (it is not stored), so while tasks wait for room
the dispatcher also looks every BACKLOG_POLL_SECONDS; otherwise every OUTBOX_INTERVAL_SECONDS (for
rows the lease sweep put back, or committed while NATS was away). Wake-ups coalesce: one pass at a
time per process, and the words and uploads that arrive while it runs set one event, which the next
pass clears as it starts, so a burst of them costs one more pass, not one each. With a window of 16
or more, the workers' words wake a pass only once an eighth of the window is freed (the rest of it
is still in the stream, so no worker waits): at 200 images/s and a window of 32, 50 passes a second,
not 200."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.publisher import TaskPublisher
from api.queued_marks import QueuedMarks
from core import queue, tasks
from core.models import Priority

log = logging.getLogger(__name__)

# Without a window (DISPATCH_WINDOW = 0), the most one pass publishes.
UNLIMITED_BATCH = 200
# While tasks wait for room and no worker's word arrives (lost, or a worker from before that word):
# how soon a place freed by a finished task is filled anyway.
BACKLOG_POLL_SECONDS = 0.1
# Places freed (workers' `settled` words) that wake a pass at once: an eighth of the window, so one
# pass refills several places while the stream still holds the rest of the window (the workers'
# fetch-ahead); a small window (under 16) is refilled place by place. Fewer freed wait for the
# next BACKLOG_POLL_SECONDS look.
SETTLED_BATCH_SHARE = 1 / 8
# The least part of the window each of `normal` and `bulk` is owed while it has tasks waiting.
LOWER_CLASS_SHARE = 0.1
# How long an upload's request waits for the pass that publishes its task; past it, the task is
# published by a later pass, and the answer (already committed) is sent anyway.
REQUEST_WAIT_SECONDS = queue.PUBLISH_TIMEOUT_SECONDS

_ORDER = (Priority.INTERACTIVE, Priority.NORMAL, Priority.BULK)


@dataclass(frozen=True)
class DispatchPolicy:
    # Tasks not final yet allowed in the stream at once (0: no limit, published as they come).
    window: int
    # Between passes while nothing waits for room.
    interval_seconds: float
    # Places past a full window for `interactive` tasks only (DISPATCH_URGENT_PLACES); none
    # without a window.
    urgent_places: int = 0


def allocate(
    free: int,
    window: int,
    in_window: Mapping[Priority, int],
    waiting: Mapping[Priority, int],
    urgent: int = 0,
) -> dict[Priority, int]:
    """How many waiting tasks of each priority go into the stream now (see the module docstring):
    first what `normal` and `bulk` are owed, then strictly by priority.

    `free`: the window's places not taken (negative while urgent places are in use); `urgent`: the
    places past the window, which only `interactive` tasks take. Past the window, what a lower
    class is owed may take an urgent place only as far as interactive tasks hold the window's: so
    a steady flow of interactive work cannot keep the lower classes out, and otherwise an urgent
    place stays free for the next interactive upload (a normal or bulk task there would only wait
    in the stream, as no worker's urgent lane takes it)."""
    granted = dict.fromkeys(_ORDER, 0)
    room = _room(free, urgent)
    # The window's places that interactive tasks hold (those past it are in urgent places).
    # Never below 0: with more normal and bulk tasks in the stream than the window (after the window
    # was lowered, or beside a replica with another window) nothing is lent.
    lent = max(0, min(room - max(0, free), in_window.get(Priority.INTERACTIVE, 0) - max(0, -free)))
    owed = max(1, math.ceil(window * LOWER_CLASS_SHARE))
    for priority in (Priority.NORMAL, Priority.BULK):
        share = max(
            0, min(waiting.get(priority, 0), max(0, owed - in_window.get(priority, 0)), max(0, free) + lent)
        )
        lent -= share - min(share, max(0, free))
        granted[priority] += share
        room -= share
        free -= share
    for priority in _ORDER:
        # Past the window, interactive tasks only.
        places = room if priority is Priority.INTERACTIVE else min(room, free)
        more = max(0, min(waiting.get(priority, 0) - granted[priority], places))
        granted[priority] += more
        room -= more
        free -= more
    return granted


def _room(free: int, urgent: int) -> int:
    """Places a pass may fill: the window's free ones, and the urgent places past it not taken
    (`free` is negative by the urgent places in use)."""
    return max(0, free) + max(0, min(urgent, urgent + free))


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: TaskPublisher,
        policy: DispatchPolicy,
        driver_pool: asyncpg.Pool,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._policy = policy
        self._marks = QueuedMarks(driver_pool)
        self._wake = asyncio.Event()
        # Resolved by the next pass to start (and end): what a request waits for.
        self._next_pass: asyncio.Future[None] | None = None
        # Whether the last pass left tasks waiting for room.
        self._backlog = False
        # Places freed since the last pass started, and how many wake one.
        self._freed = 0
        self._batch = max(1, int(policy.window * SETTLED_BATCH_SHARE))

    def wake(self) -> None:
        """A worker let go of a message: look now, if tasks are waiting for room (otherwise there
        is nothing to fill, and a pass per finished task would only load the database) and enough
        places were freed since the last pass (SETTLED_BATCH_SHARE)."""
        if self._backlog:
            self._freed += 1
            if self._freed >= self._batch:
                self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch when woken, while a backlog waits for room, and every interval, until `stop`."""
        while not stop.is_set():
            pause = BACKLOG_POLL_SECONDS if self._backlog else self._policy.interval_seconds
            await _woken(stop, self._wake, pause)
            if stop.is_set():
                break
            self._wake.clear()
            self._freed = 0
            done, self._next_pass = self._next_pass, None
            try:
                self._backlog = await self.dispatch_all()
            except Exception as exc:  # the database or NATS is away: the next pass tries again
                log.warning("dispatcher pass failed, retrying: %s", exc)
                self._backlog = False
            finally:
                if done is not None and not done.done():
                    done.set_result(None)
        if self._next_pass is not None and not self._next_pass.done():
            self._next_pass.set_result(None)

    async def queue_new(self, task_id: int) -> None:
        """Called once a new task is committed (never raises). With a window: wake the dispatcher
        and wait for the pass that sees the task (dispatch_committed). Without one nothing is held
        back, so the request publishes its task itself and waits for its queued mark's group commit
        (api/queued_marks.py): a pass per upload cost a transaction, the advisory lock and the
        fair-order query for nothing (BENCHMARKS.md, "The upload's own publish when there is no
        window"). A publish
        that fails leaves the row to the next pass, as does a process killed in between (JetStream
        drops a second publish under the same `Nats-Msg-Id`)."""
        if self._policy.window:
            await self.dispatch_committed()
            return
        js = self._publisher.jetstream
        if js is None:
            return  # the first pass after NATS is back publishes it
        try:
            await queue.publish_task(js, task_id)
        except Exception as exc:
            log.warning("publishing task %s failed; the next pass publishes it: %s", task_id, exc)
            return
        await self._marks.mark(task_id)

    async def close(self) -> None:
        await self._marks.close()

    async def dispatch_committed(self) -> None:
        """Called once a task is committed: wake the dispatcher and wait for the pass that sees
        the task (bounded; never raises). The task may still wait in the table for room."""
        if self._publisher.jetstream is None:
            return  # a pass would publish nothing; the first one after NATS is back will
        if self._next_pass is None:
            self._next_pass = asyncio.get_running_loop().create_future()
        waiting = self._next_pass
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiting), REQUEST_WAIT_SECONDS)
        except TimeoutError:
            log.warning("dispatcher pass slower than %.0f s; the task stays queued", REQUEST_WAIT_SECONDS)

    async def dispatch_all(self) -> bool:
        """Fill the window (in batches, when there is none); whether tasks are left waiting for room."""
        while True:
            published, backlog = await self.dispatch_once()
            if not (self._policy.window == 0 and published == UNLIMITED_BATCH):
                return backlog

    async def dispatch_once(self) -> tuple[int, bool]:
        """One pass; returns (tasks published, whether tasks are left waiting for room)."""
        js = self._publisher.jetstream
        if js is None:
            return 0, False
        window = self._policy.window
        urgent = self._policy.urgent_places if window else 0
        async with self._sessions() as session, session.begin():
            await tasks.lock_dispatch(session)
            if window:
                # Counted up to the window and its urgent places: at the cap, both are full (and
                # that is all a pass needs).
                in_window = await tasks.count_in_window(session, window + urgent)
                free = window - in_window.total
            else:
                # Nothing is held back, so there is no window to count (it would be every task in
                # the stream): the keys take turns within each batch.
                in_window, free = tasks.InWindow(dict.fromkeys(_ORDER, 0), {}), UNLIMITED_BATCH
            room = _room(free, urgent)
            if room <= 0:
                return 0, True
            # One more than there is room for: whether any is left waiting.
            # Without a window, new tasks are their requests' to publish (queue_new): a pass takes
            # only what a failed publish or a killed process left, not a row a request still owns.
            young = 0 if window else REQUEST_WAIT_SECONDS + 1
            candidates = await tasks.next_waiting(session, room + 1, in_window.by_owner, young_seconds=young)
            granted = allocate(
                free, window, in_window.by_priority, {p: len(rows) for p, rows in candidates.items()}, urgent
            )
            chosen = [row for priority in _ORDER for row in candidates[priority][: granted[priority]]]
            # Whether tasks are left waiting (with only urgent places free, every normal and bulk one
            # is: the pass must go on looking for room, as with a full window).
            left = sum(len(rows) for rows in candidates.values()) > len(chosen)
            if not chosen:
                return 0, left
            # Started in order on one connection, so the stream stores them in this order.
            await asyncio.gather(
                *(
                    # Into the task's trace, under its upload span, when it was traced.
                    queue.publish_task(
                        js, row.id, row.attempts, row.generation, row.retries, traceparent=row.traceparent
                    )
                    for row in chosen
                )
            )
            await tasks.mark_queued_in(session, [row.id for row in chosen])
        log.debug("dispatched %d task(s); %s", len(chosen), "more waiting" if left else "none waiting")
        return len(chosen), left


async def _woken(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Until `stop` or `wake` is set, or `seconds` have passed."""
    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
