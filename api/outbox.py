"""Getting committed tasks into JetStream, and keeping them there: the API's NATS connection,
its outbox relay and its lease sweep.

- The row is committed before its id is published. If the publish fails (NATS down, the process
  killed in between), the row keeps `queued_at IS NULL` and the relay, which runs in every API
  process, publishes it later. Replicas claim rows with `FOR UPDATE SKIP LOCKED`, and the message
  id (`Nats-Msg-Id`) makes any remaining double publish harmless, so each task is queued once.
- A row left `processing` past PROCESSING_LEASE_SECONDS lost its worker and, as JetStream stops
  after MAX_DELIVER deliveries, maybe its message too. The sweep puts it back to `pending` for the
  relay to queue again, or marks it `failed` once it has had all its attempts: nothing is stuck,
  and nothing that kills every worker that touches it loops for ever.
- The sweep also deletes temporary files (`.partial-*`) older than the lease: what a process killed
  mid-write left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

import anyio.to_thread
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import queue
from core.models import ImageTask, TaskStatus
from core.storage import Storage

log = logging.getLogger(__name__)

CONNECT_RETRY_SECONDS = 2.0
RELAY_BATCH = 200
# The request that committed a row publishes it itself a moment later; give it that moment.
RELAY_GRACE = timedelta(seconds=2)
LEASE_GAVE_UP = (
    "Processing was interrupted on all {attempts} attempts (the worker stopped each time); giving up."
)


class TaskPublisher:
    """Holds the API's one NATS connection for the process lifetime; never connects per request."""

    def __init__(
        self,
        nats_url: str,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        *,
        relay_interval: float,
        lease_seconds: float,
        max_attempts: int,
    ) -> None:
        self._nats_url = nats_url
        self._sessions = sessions
        self._storage = storage
        self._relay_interval = relay_interval
        self._lease = timedelta(seconds=lease_seconds)
        self._max_attempts = max_attempts
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._stream_ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def is_ready(self) -> bool:
        return self._nc is not None and self._nc.is_connected and self._stream_ready.is_set()

    async def start(self) -> None:
        """Connect in the background: the API serves (and accepts uploads) while NATS is down."""
        self._tasks = [
            asyncio.create_task(self._connect(), name="nats-connect"),
            asyncio.create_task(self._maintain_forever(), name="outbox-relay"),
        ]

    async def close(self) -> None:
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
            async with self._sessions() as session:
                await session.execute(
                    update(ImageTask).where(ImageTask.id == task_id).values(queued_at=func.now())
                )
                await session.commit()
        except Exception as exc:  # published but not marked: the relay re-publishes, deduplicated
            log.warning("task %s is queued but could not be marked so: %s", task_id, exc)
        return True

    async def relay_once(self) -> int:
        """Publish rows that were committed but never confirmed queued. Returns how many."""
        if not self.is_ready or self._js is None:
            return 0
        async with self._sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(ImageTask.id, ImageTask.attempts)
                    .where(
                        ImageTask.queued_at.is_(None),
                        ImageTask.status == TaskStatus.PENDING,
                        ImageTask.upload_time < func.now() - RELAY_GRACE,
                    )
                    .order_by(ImageTask.id)
                    .limit(RELAY_BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                await queue.publish_task(self._js, row.id, row.attempts)
            if rows:
                await session.execute(
                    update(ImageTask)
                    .where(ImageTask.id.in_([row.id for row in rows]))
                    .values(queued_at=func.now())
                )
        if rows:
            log.info("outbox relay queued %d task(s)", len(rows))
        return len(rows)

    async def sweep_once(self) -> tuple[int, int]:
        """Deal with rows whose lease on `processing` expired. Returns (re-queued, failed)."""
        expired = (
            ImageTask.status == TaskStatus.PROCESSING,
            ImageTask.started_at < func.now() - self._lease,
        )
        async with self._sessions() as session, session.begin():
            failed = await session.execute(
                update(ImageTask)
                .where(*expired, ImageTask.attempts >= self._max_attempts)
                .values(
                    status=TaskStatus.FAILED,
                    error=LEASE_GAVE_UP.format(attempts=self._max_attempts),
                    finished_at=func.now(),
                )
            )
            requeued = await session.execute(
                update(ImageTask).where(*expired).values(status=TaskStatus.PENDING, queued_at=None)
            )
        counts = (requeued.rowcount or 0, failed.rowcount or 0)
        if any(counts):
            log.warning("lease sweep: %d task(s) re-queued, %d failed after their last attempt", *counts)
        await anyio.to_thread.run_sync(self._storage.remove_stale_partials, self._lease.total_seconds())
        return counts

    async def _connect(self) -> None:
        while True:
            try:
                self._nc = await queue.connect(self._nats_url, name="imagequeue-api")
                self._js = self._nc.jetstream()
                await queue.ensure_stream(self._js)
                self._stream_ready.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("NATS not available yet (%s); retrying in %.0f s", exc, CONNECT_RETRY_SECONDS)
                if self._nc is not None:
                    with contextlib.suppress(Exception):
                        await self._nc.close()
                    self._nc = None
                await asyncio.sleep(CONNECT_RETRY_SECONDS)

    async def _maintain_forever(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                if time.monotonic() - last_sweep > self._lease.total_seconds() / 10:
                    last_sweep = time.monotonic()
                    await self.sweep_once()
                while await self.relay_once() == RELAY_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed, will retry: %s", exc)
            await asyncio.sleep(self._relay_interval)
