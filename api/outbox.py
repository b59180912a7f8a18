"""Getting committed tasks into JetStream, and keeping them there: the API's NATS connection,
its outbox relay and its lease sweep.

- The row is committed before its id is published. If the publish fails (NATS down, the process
  killed in between), the row keeps `queued_at IS NULL` and the relay, which runs in every API
  process, publishes it later. Replicas claim rows with `FOR UPDATE SKIP LOCKED`, and the message
  id (`Nats-Msg-Id`) makes any remaining double publish harmless, so each task is queued once.
- Marking rows queued is a group commit: the requests published while one mark is being written
  share the next one (one UPDATE for all of them), and each waits for the one holding its row.
  Under load that is one short transaction for many uploads instead of one each; alone, it is
  the same single transaction as before.
- A row still `processing` after its lease (`leased_until`, renewed by its worker's heartbeats)
  lost its worker, and perhaps its message. The sweep puts it back to `pending` for the relay to
  queue again, or marks it `failed` once it has had all its attempts: nothing is stuck, and nothing
  that kills every worker that touches it loops for ever.
- A row `pending` and queued more than LOST_AFTER_SECONDS ago, while the stream holds no message
  at all, lost its message (a NATS store lost in a crash, a stream purged by hand): it is queued
  again. The empty-stream condition keeps a long backlog from being re-published.
- The sweep also deletes temporary files (`.partial-*`) older than LOST_AFTER_SECONDS: what a
  process killed mid-write left behind (in the local folders, which every storage backend uses
  for its temporary files).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import timedelta

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import queue, tasks
from core.storage import Storage

log = logging.getLogger(__name__)

MISCONFIGURED_RETRY_SECONDS = 30.0
RELAY_BATCH = 200
# The request that committed a row publishes it itself a moment later; give it that moment.
RELAY_GRACE = timedelta(seconds=2)


class TaskPublisher:
    """Holds the API's one NATS connection for the process lifetime; never connects per request."""

    def __init__(
        self,
        nats_url: str,
        sessions: async_sessionmaker[AsyncSession],
        database: asyncpg.Pool,
        storage: Storage,
        *,
        relay_interval: float,
        lost_after_seconds: float,
        max_attempts: int,
        stream_replicas: int = 1,
    ) -> None:
        self._nats_url = nats_url
        self._sessions = sessions
        self._database = database
        self._storage = storage
        self._relay_interval = relay_interval
        self._lost_after = timedelta(seconds=lost_after_seconds)
        self._max_attempts = max_attempts
        self._stream_replicas = stream_replicas
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = asyncio.Event()
        # Why NATS is not usable beyond being unreachable, for /ready (None: nothing known).
        self.nats_problem: str | None = None
        self._tasks: list[asyncio.Task] = []
        # Published tasks waiting for their `queued_at`, and the task writing the current batch.
        self._unmarked: list[tuple[int, asyncio.Future[None]]] = []
        self._marking: asyncio.Task | None = None

    @property
    def is_ready(self) -> bool:
        return self._nc is not None and self._nc.is_connected and self._stream_ready.is_set()

    @property
    def jetstream(self) -> JetStreamContext | None:
        """The JetStream context on this process's connection, once ready (for /metrics)."""
        return self._js if self.is_ready else None

    async def start(self) -> None:
        """Connect in the background: the API serves (and accepts uploads) while NATS is down."""
        self._tasks = [
            asyncio.create_task(self._connect(), name="nats-connect"),
            asyncio.create_task(self._maintain_forever(), name="outbox-relay"),
        ]

    async def close(self) -> None:
        if self._marking is not None:
            with contextlib.suppress(Exception):
                await self._marking
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def publish_committed(self, task_id: int) -> bool:
        """Publish a committed task now; False leaves it to the relay (never raises)."""
        if not self.is_ready or self._js is None:
            return False
        try:
            await queue.publish_task(self._js, task_id)
        except Exception as exc:  # any failure here is retried by the relay
            log.warning("publish of task %s failed, the outbox relay will retry: %s", task_id, exc)
            return False
        try:
            await self._mark_queued(task_id)
        except Exception as exc:  # published but not marked: the relay re-publishes, deduplicated
            log.warning("task %s is queued but could not be marked so: %s", task_id, exc)
        return True

    async def _mark_queued(self, task_id: int) -> None:
        """Set the task's `queued_at`, in the same UPDATE as the other tasks published meanwhile."""
        marked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unmarked.append((task_id, marked))
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._write_marks(), name="outbox-marks")
        await marked

    async def _write_marks(self) -> None:
        while self._unmarked:
            batch, self._unmarked = self._unmarked, []
            try:
                # One statement on the driver pool (core.tasks): through a session it was 4% of the
                # API's CPU at 16 uploads at a time.
                await tasks.mark_queued(self._database, [task_id for task_id, _ in batch])
            except Exception as exc:
                for _, marked in batch:
                    if not marked.done():  # done: its request was cancelled (client gone)
                        marked.set_exception(exc)
                continue
            for _, marked in batch:
                if not marked.done():
                    marked.set_result(None)

    async def relay_once(self) -> int:
        """Publish rows that were committed but never confirmed queued. Returns how many."""
        if not self.is_ready or self._js is None:
            return 0
        async with self._sessions() as session, session.begin():
            rows = await tasks.lock_unqueued(session, limit=RELAY_BATCH, grace=RELAY_GRACE)
            for row in rows:
                await queue.publish_task(self._js, row.id, row.attempts)
            if rows:
                await tasks.mark_queued_in(session, [row.id for row in rows])
        if rows:
            log.info("outbox relay queued %d task(s)", len(rows))
        return len(rows)

    async def sweep_once(self) -> tuple[int, int, int]:
        """Re-queue or fail rows whose worker is gone; re-queue rows whose message is gone.

        Returns how many rows were (re-queued after a lost worker, failed, re-queued after a lost
        message).
        """
        async with self._sessions() as session, session.begin():
            requeued, failed = await tasks.take_back_expired(session, self._max_attempts)
        try:
            lost = await self._requeue_lost_messages()
        finally:  # a NATS hiccup above must not keep the temporary files forever
            await self._storage.remove_stale(self._lost_after.total_seconds())
        counts = (requeued, failed, lost)
        if any(counts):
            log.warning(
                "lease sweep: %d re-queued (worker gone), %d failed, %d re-queued (message gone)", *counts
            )
        return counts

    async def _requeue_lost_messages(self) -> int:
        if not self.is_ready or self._js is None:
            return 0
        # Work-queue retention: a message leaves the stream only when acknowledged, so an empty
        # stream holds nothing pending, in flight or waiting out a nak.
        stream = await self._js.stream_info(queue.STREAM)
        if stream.state.messages:
            return 0
        async with self._sessions() as session, session.begin():
            return await tasks.unqueue_lost(session, self._lost_after)

    async def _connect(self) -> None:
        self._nc = await queue.connect_with_retry(self._nats_url, name="imagequeue-api", stop=asyncio.Event())
        assert self._nc is not None  # without a stop event it returns only once connected
        self._js = self._nc.jetstream()
        while True:
            try:
                await queue.ensure_stream(self._js, self._stream_replicas)
            except Exception as exc:
                if queue.is_misconfiguration(exc):
                    # Not hidden: /ready says "misconfigured" and this is logged until it is fixed.
                    self.nats_problem = "misconfigured"
                    log.error(
                        "JetStream refused the stream set-up; fix it, retrying in %.0f s: %s",
                        MISCONFIGURED_RETRY_SECONDS,
                        exc,
                    )
                    await asyncio.sleep(MISCONFIGURED_RETRY_SECONDS)
                else:
                    log.warning("JetStream not ready (%s); retrying", exc)
                    await asyncio.sleep(queue.CONNECT_RETRY_SECONDS)
                continue
            self.nats_problem = None
            self._stream_ready.set()
            return

    async def _maintain_forever(self) -> None:
        last_sweep = 0.0
        while True:
            # Each step on its own: a failing sweep must not stop the relay, nor the other way round.
            if time.monotonic() - last_sweep > self._lost_after.total_seconds() / 10:
                last_sweep = time.monotonic()
                await _logging_failures("lease sweep", self.sweep_once())
            await _logging_failures("outbox relay", self._relay_all())
            await asyncio.sleep(self._relay_interval)

    async def _relay_all(self) -> None:
        while await self.relay_once() == RELAY_BATCH:
            pass


async def _logging_failures(step: str, work: Awaitable[object]) -> None:
    try:
        await work
    except Exception as exc:
        log.warning("%s pass failed, will retry: %s", step, exc)
