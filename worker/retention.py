"""Forgetting old tasks: with RETENTION_DAYS set, finished tasks (done or failed) older than that
are deleted with their files. Every worker runs it now and then; `SKIP LOCKED` lets several share
the work without waiting on each other."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import loops
from core.models import FINAL_STATUSES, ImageTask, output_files
from core.storage import NOT_READY, Area, Storage, StorageUnavailable

log = logging.getLogger(__name__)

BATCH = 500
INTERVAL_SECONDS = 3600.0


async def purge_expired(
    sessions: async_sessionmaker[AsyncSession], storage: Storage, older_than: timedelta
) -> int:
    """Delete one batch of finished tasks older than `older_than`, then their files. Returns how many.

    Rows go first: a crash between the two steps (or a file store outage) leaves files without rows
    (wasted space), never rows without files (tasks that cannot be shown).
    """
    if not storage.is_ready:  # checked first: rows deleted now would leave their files for good
        raise StorageUnavailable(NOT_READY)
    expired = (
        select(ImageTask.id)
        .where(ImageTask.status.in_(FINAL_STATUSES), ImageTask.finished_at < func.now() - older_than)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    async with sessions() as session, session.begin():
        rows = (
            await session.execute(
                delete(ImageTask)
                .where(ImageTask.id.in_(expired))
                .returning(ImageTask.input_name, ImageTask.output_name, ImageTask.outputs)
            )
        ).all()
    await storage.remove(Area.UPLOADS, [row.input_name for row in rows])
    await storage.remove(
        Area.PROCESSED, [file for row in rows for file in output_files(row.output_name, row.outputs)]
    )
    return len(rows)


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
