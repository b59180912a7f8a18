"""The API's reprocess loop: removes the files reprocessing replaced, and drives bulk jobs.

Every API process runs it, REPROCESS_INTERVAL_SECONDS apart. Each pass takes its rows with
`FOR UPDATE SKIP LOCKED`, so replicas share the work and never do the same row twice at once; all
state is in PostgreSQL, so a job goes on from where it was after any API restart (core/jobs.py).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.publisher import TaskPublisher
from core import loops, reprocessing
from core.storage import Storage

log = logging.getLogger(__name__)


class ReprocessRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: TaskPublisher,
        storage: Storage,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._storage = storage

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        await loops.every(interval, self.run_once, stop=stop, what="reprocess loop")

    async def run_once(self) -> None:
        await self.remove_superseded()

    async def remove_superseded(self) -> int:
        """The old outputs of reprocessed tasks that are final again; how many tasks were tidied."""
        if not self._storage.is_ready:
            return 0
        tidied = 0
        while True:
            async with self._sessions() as session:
                count = await reprocessing.remove_superseded(session, self._storage)
            tidied += count
            if count < reprocessing.SUPERSEDED_BATCH:
                break
        if tidied:
            log.info("removed the replaced outputs of %d reprocessed task(s)", tidied)
        return tidied
