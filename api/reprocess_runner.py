"""The API's reprocess loop: removes the files reprocessing replaced, and drives bulk jobs.

Every API process runs it, REPROCESS_INTERVAL_SECONDS apart. Each pass takes its rows with
`FOR UPDATE SKIP LOCKED`, so replicas share the work and never do the same row twice at once; all
state is in PostgreSQL, so a job goes on from where it was after any API restart (core/jobs.py).
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.dispatcher import Dispatcher
from core import jobs, loops, reprocessing
from core.storage import Storage

log = logging.getLogger(__name__)


class ReprocessRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        storage: Storage,
    ) -> None:
        self._sessions = sessions
        self._dispatcher = dispatcher
        self._storage = storage

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        await loops.every(interval, self.run_once, stop=stop, what="reprocess loop")

    async def run_once(self) -> None:
        # Each on its own: a file store outage must not hold the jobs up, nor the reverse.
        try:
            await self.remove_superseded()
        finally:
            await self.step_jobs()

    async def step_jobs(self) -> int:
        """One step of every job with something to do (core/jobs.py); how many tasks were queued."""
        async with self._sessions() as session:
            job_ids = await jobs.steppable(session)
        published = 0
        for job_id in job_ids:
            async with self._sessions() as session:
                queued = await jobs.step(session, job_id)
            # Committed: the dispatcher publishes them (with bulk priority) as the window allows.
            if queued:
                await self._dispatcher.dispatch_committed()
            published += len(queued or ())
        if published:
            log.info("bulk reprocess: %d task(s) queued", published)
        return published

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
