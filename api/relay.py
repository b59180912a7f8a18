"""The outbox relay: rows committed but never confirmed queued (`queued_at IS NULL`) are published.

An upload's request publishes its own row a moment after the commit (api/publisher.py); the relay,
which runs in every API process, catches what that missed: NATS down, the process killed between
commit and publish, a row put back by the lease sweep (api/sweeps.py). Replicas claim rows with
`FOR UPDATE SKIP LOCKED`, and the message id (`Nats-Msg-Id`) makes any remaining double publish
harmless, so each task is queued once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.publisher import TaskPublisher
from core import loops, queue, tasks

log = logging.getLogger(__name__)

RELAY_BATCH = 200
# The request that committed a row publishes it itself a moment later; give it that moment.
RELAY_GRACE = timedelta(seconds=2)


class OutboxRelay:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], publisher: TaskPublisher) -> None:
        self._sessions = sessions
        self._publisher = publisher

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Relay every `interval` seconds until `stop` is set."""
        await loops.every(interval, self.relay_all, stop=stop, what="outbox relay")

    async def relay_all(self) -> None:
        while await self.relay_once() == RELAY_BATCH:
            pass

    async def relay_once(self) -> int:
        """Publish rows that were committed but never confirmed queued. Returns how many."""
        js = self._publisher.jetstream
        if js is None:
            return 0
        async with self._sessions() as session, session.begin():
            rows = await tasks.lock_unqueued(session, limit=RELAY_BATCH, grace=RELAY_GRACE)
            for row in rows:
                # Into the task's trace, under its upload span, when it was traced.
                await queue.publish_task(
                    js, row.id, row.attempts, row.generation, row.retries, traceparent=row.traceparent
                )
            if rows:
                await tasks.mark_queued_in(session, [row.id for row in rows])
        if rows:
            log.info("outbox relay queued %d task(s)", len(rows))
        return len(rows)
