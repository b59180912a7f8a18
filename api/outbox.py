"""Getting committed tasks into JetStream: the API's NATS connection and its outbox relay.

The row is committed before its id is published. If the publish fails (NATS down, the process
killed in between), the row keeps `queued_at IS NULL` and the relay, which runs in every API
process, publishes it later. Replicas claim rows with `FOR UPDATE SKIP LOCKED`, and the message id
(`Nats-Msg-Id`) makes any remaining double publish harmless, so each task is queued once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import queue
from core.models import ImageTask, TaskStatus

log = logging.getLogger(__name__)

CONNECT_RETRY_SECONDS = 2.0
RELAY_BATCH = 200
# The request that committed a row publishes it itself a moment later; give it that moment.
_RELAY_GRACE = text("interval '2 seconds'")


class TaskPublisher:
    """Holds the API's one NATS connection for the process lifetime; never connects per request."""

    def __init__(
        self, nats_url: str, sessions: async_sessionmaker[AsyncSession], *, relay_interval: float
    ) -> None:
        self._nats_url = nats_url
        self._sessions = sessions
        self._relay_interval = relay_interval
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
            asyncio.create_task(self._relay_forever(), name="outbox-relay"),
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
            rows = await session.scalars(
                select(ImageTask.id)
                .where(
                    ImageTask.queued_at.is_(None),
                    ImageTask.status == TaskStatus.PENDING,
                    ImageTask.upload_time < func.now() - _RELAY_GRACE,
                )
                .order_by(ImageTask.id)
                .limit(RELAY_BATCH)
                .with_for_update(skip_locked=True)
            )
            task_ids = list(rows)
            for task_id in task_ids:
                await queue.publish_task(self._js, task_id)
            if task_ids:
                await session.execute(
                    update(ImageTask).where(ImageTask.id.in_(task_ids)).values(queued_at=func.now())
                )
        if task_ids:
            log.info("outbox relay queued %d task(s)", len(task_ids))
        return len(task_ids)

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

    async def _relay_forever(self) -> None:
        while True:
            try:
                while await self.relay_once() == RELAY_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox relay pass failed, will retry: %s", exc)
            await asyncio.sleep(self._relay_interval)
