"""Tasks a page at a time, newest first: the one query behind `GET /tasks` and the gallery.

Keyset pagination (`id < cursor`) rather than offsets, so a page stays consistent while new tasks
arrive and a deep page costs no more than the first.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask, TaskStatus


@dataclass(frozen=True)
class TaskSlice:
    tasks: list[ImageTask]
    # The id to pass as `cursor` for the next page; None on the last one.
    next_cursor: int | None


async def newest_tasks(
    session: AsyncSession,
    *,
    limit: int,
    cursor: int | None = None,
    status: TaskStatus | None = None,
    owner: str | None = None,
) -> TaskSlice:
    """At most `limit` tasks older than `cursor`, newest first; only `owner`'s when one is given."""
    # One row more than asked tells whether another page follows, without a COUNT.
    query = select(ImageTask).order_by(ImageTask.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(ImageTask.status == status)
    if cursor is not None:
        query = query.where(ImageTask.id < cursor)
    if owner is not None:
        query = query.where(ImageTask.owner == owner)
    rows = list(await session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    return TaskSlice(page, page[-1].id if more else None)
