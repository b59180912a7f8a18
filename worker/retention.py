"""Forgetting old tasks: with RETENTION_DAYS set, finished tasks (done or failed) older than that
are deleted with their files. Every worker runs it now and then; `SKIP LOCKED` lets several share
the work without waiting on each other."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import loops, tasks
from core.storage import Storage

log = logging.getLogger(__name__)

BATCH = 500
INTERVAL_SECONDS = 3600.0


async def purge_expired(
    sessions: async_sessionmaker[AsyncSession], storage: Storage, older_than: timedelta
) -> int:
    """Delete one batch of finished tasks older than `older_than`, then their files. Returns how many
    (core.tasks.delete_finished: rows first, so a failure leaves files without rows, never the
    other way round)."""
    async with sessions() as session:
        return await tasks.delete_finished(session, storage, older_than=older_than, limit=BATCH)


async def purge_until_stopped(
    sessions: async_sessionmaker[AsyncSession], storage: Storage, days: int, stop: asyncio.Event
) -> None:
    """A retention pass now and then every INTERVAL_SECONDS, until `stop` is set."""
    older_than = timedelta(days=days)

    async def purge_all() -> None:
        removed = total = await purge_expired(sessions, storage, older_than)
        while removed == BATCH:
            removed = await purge_expired(sessions, storage, older_than)
            total += removed
        if total:
            log.info("retention: deleted %d task(s) finished more than %d day(s) ago", total, days)

    # A failed pass (a database outage, say) is logged; the next round tries again.
    await loops.every(INTERVAL_SECONDS, purge_all, stop=stop, what="retention")
