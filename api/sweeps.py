"""The API's sweeps: tasks whose worker or message is gone, and files whose writer is gone.

- A row still `processing` after its lease (`leased_until`, renewed by its worker's heartbeats)
  lost its worker, and perhaps its message. The sweep puts it back to `pending` for the relay to
  queue again, or marks it `failed` once it has had all its attempts: nothing is stuck, and nothing
  that kills every worker that touches it loops for ever.
- A row `pending` and queued more than LOST_AFTER_SECONDS ago, while the stream holds no message
  at all, lost its message (a NATS store lost in a crash, a stream purged by hand): it is queued
  again. The empty-stream condition keeps a long backlog from being re-published.
- Direct uploads (api/routes/direct_uploads.py) never completed are forgotten, and their objects
  deleted, LOST_AFTER_SECONDS after their presigned POST expired (by then no upload can still be
  arriving); completed or refused ones a day later (core.direct_uploads).
- Temporary files (`.partial-*`) older than LOST_AFTER_SECONDS are deleted: what a process killed
  mid-write left behind (in the local folders, which every storage backend uses for its temporary
  files); the nats backend also purges the chunks of puts cut short (Storage.remove_stale).
- Resumable uploads past TUS_EXPIRY_SECONDS (finished or not) are deleted with their stored pieces
  (core.resumable); a stored piece no upload names (its PATCH's API process was killed before
  adding it), once older than TUS_EXPIRY_SECONDS, is removed too.
- Bulk reprocess jobs that ended more than JOB_RETENTION_SECONDS ago are deleted (core.jobs; 0
  keeps them), at most JOB_BATCH a sweep.

Every API process sweeps, a tenth of LOST_AFTER_SECONDS apart; the statements are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.publisher import TaskPublisher
from core import direct_uploads, jobs, loops, queue, resumable, tasks
from core.storage import Area, Storage
from core.storage.s3 import S3Storage

log = logging.getLogger(__name__)

# Direct uploads swept in one transaction.
DIRECT_UPLOAD_BATCH = 100
# Ended jobs deleted a sweep: each may take up to REPROCESS_JOB_MAX_TASKS task rows with it.
JOB_BATCH = 20


class Sweeps:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        publisher: TaskPublisher,
        storage: Storage,
        *,
        lost_after_seconds: float,
        max_attempts: int,
        job_retention_seconds: float = 0,
        tus_expiry_seconds: float,
    ) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._storage = storage
        self._lost_after = timedelta(seconds=lost_after_seconds)
        self._max_attempts = max_attempts
        self._job_retention = timedelta(seconds=job_retention_seconds) if job_retention_seconds else None
        self._tus_expiry = timedelta(seconds=tus_expiry_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep now, then every tenth of LOST_AFTER_SECONDS, until `stop` is set."""
        interval = self._lost_after.total_seconds() / 10
        await loops.every(interval, self.sweep_once, stop=stop, what="lease sweep")

    async def sweep_once(self) -> tuple[int, int, int]:
        """Re-queue or fail rows whose worker is gone; re-queue rows whose message is gone.

        Returns how many rows were (re-queued after a lost worker, failed, re-queued after a lost
        message).
        """
        requeued, failed = await self._expire_leases()
        try:
            lost = await self._requeue_lost_messages()
        finally:  # a NATS hiccup above must not keep the temporary files forever
            try:
                await self._storage.remove_stale(self._lost_after.total_seconds())
                await self._expire_resumable_uploads()
            finally:  # nor a storage hiccup there the abandoned direct uploads
                try:
                    await self.sweep_direct_uploads()
                finally:  # ended jobs last: a big cascade that fails must not hold up the rest
                    await self.delete_ended_jobs()
        counts = (requeued, failed, lost)
        if any(counts):
            log.warning(
                "lease sweep: %d re-queued (worker gone), %d failed, %d re-queued (message gone)", *counts
            )
        return counts

    async def sweep_direct_uploads(self) -> int:
        """Forget direct uploads never completed (deleting their objects); how many. Only where
        they can exist: an API on another backend cannot delete their objects."""
        if not isinstance(self._storage, S3Storage):
            return 0
        swept = 0
        while True:
            async with self._sessions() as session, session.begin():
                abandoned = await direct_uploads.lock_abandoned(
                    session, grace=self._lost_after, limit=DIRECT_UPLOAD_BATCH
                )
                if not abandoned:
                    await direct_uploads.forget_finished(session)
                    break
                # The rows go only with their objects: a store that fails here keeps them for next time.
                await self._storage.remove(Area.UPLOADS, [row.object_name for row in abandoned])
                await direct_uploads.forget(session, [row.id for row in abandoned])
            swept += len(abandoned)
        if swept:
            log.info("swept %d direct uploads never completed", swept)
        return swept

    async def delete_ended_jobs(self) -> int:
        """Delete bulk jobs that ended more than JOB_RETENTION_SECONDS ago; how many."""
        if self._job_retention is None:
            return 0
        async with self._sessions() as session:
            deleted = await jobs.delete_ended(session, older_than=self._job_retention, limit=JOB_BATCH)
        if deleted:
            log.info("deleted %d bulk reprocess jobs ended more than %s ago", deleted, self._job_retention)
        return deleted

    async def _expire_leases(self) -> tuple[int, int]:
        """Rows `processing` past their lease: failed if out of attempts, else back to `pending`.
        Returns how many were (re-queued, failed)."""
        async with self._sessions() as session, session.begin():
            return await tasks.take_back_expired(session, self._max_attempts)

    async def _expire_resumable_uploads(self) -> None:
        if not self._storage.is_ready:  # rows deleted now would leave their pieces for good
            return
        async with self._sessions() as session:
            expired = await resumable.delete_expired(session, self._storage)
            await resumable.remove_orphan_pieces(session, self._storage, self._tus_expiry)
        if expired:
            log.info("resumable uploads: %d expired, deleted with their pieces", expired)

    async def _requeue_lost_messages(self) -> int:
        js = self._publisher.jetstream
        if js is None:
            return 0
        # Work-queue retention: a message leaves the stream only when acknowledged, so an empty
        # stream holds nothing pending, in flight or waiting out a nak.
        stream = await js.stream_info(queue.STREAM)
        if stream.state.messages:
            return 0
        return await self._unmark_queued_before(self._lost_after)

    async def _unmark_queued_before(self, lost_after: timedelta) -> int:
        """Pending rows queued longer ago than `lost_after` go back to the relay."""
        async with self._sessions() as session, session.begin():
            return await tasks.unqueue_lost(session, lost_after)
