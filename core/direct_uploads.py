"""Every statement on `direct_uploads` (core.models.DirectUpload): uploads declared by
`POST /uploads` and sent by the client straight to the S3 bucket.

A row is declared, then either completed (its task made: `task_id`) or refused (`refusal_*`) by
`POST /uploads/{id}/complete`, which holds the row's lock while it checks the object, so two
completions at once make one task. A row never completed is swept once its upload can no longer
arrive or be completed (`expires_at` plus the grace the caller gives), its object deleted; a
completed or refused row is forgotten a day later (its object is the task's, or gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import DirectUpload, ImageTask

# How long a finished row still answers a repeated completion.
KEEP_FINISHED = timedelta(days=1)


async def declare(session: AsyncSession, upload: DirectUpload) -> None:
    session.add(upload)
    await session.flush()


async def count_open(session: AsyncSession, owner: str | None) -> int:
    """Uploads `owner` declared and has neither completed nor seen refused (expired ones included,
    until the sweep takes them)."""
    statement = select(func.count()).where(
        DirectUpload.owner.is_not_distinct_from(owner),
        DirectUpload.task_id.is_(None),
        DirectUpload.refusal_status.is_(None),
    )
    return int(await session.scalar(statement) or 0)


async def lock(session: AsyncSession, upload_id: str, owner: str | None) -> DirectUpload | None:
    """The row, locked until the session's transaction ends; None when there is none for `owner`."""
    statement = (
        select(DirectUpload)
        .where(DirectUpload.id == upload_id, DirectUpload.owner.is_not_distinct_from(owner))
        .with_for_update()
    )
    return (await session.scalars(statement)).one_or_none()


async def record_task(session: AsyncSession, upload_id: str, task_id: int) -> None:
    await session.execute(update(DirectUpload).where(DirectUpload.id == upload_id).values(task_id=task_id))


async def record_refusal(session: AsyncSession, upload_id: str, status: int, message: str) -> None:
    await session.execute(
        update(DirectUpload)
        .where(DirectUpload.id == upload_id)
        .values(refusal_status=status, refusal=message[:2000])
    )


async def lock_abandoned(session: AsyncSession, *, grace: timedelta, limit: int) -> Sequence[DirectUpload]:
    """Rows never completed whose time ran out `grace` ago, locked (others' sweeps skip them).
    Not one whose object a task already uses: its completion made the task, then could not record
    it (the task commits apart), and the object is that task's original now."""
    made_a_task = exists().where(ImageTask.input_name == DirectUpload.object_name)
    statement = (
        select(DirectUpload)
        .where(
            DirectUpload.task_id.is_(None),
            DirectUpload.refusal_status.is_(None),
            DirectUpload.expires_at < datetime.now(UTC) - grace,
            ~made_a_task,
        )
        .order_by(DirectUpload.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.scalars(statement)).all()


async def forget(session: AsyncSession, upload_ids: Sequence[str]) -> None:
    await session.execute(delete(DirectUpload).where(DirectUpload.id.in_(upload_ids)))


async def forget_finished(session: AsyncSession) -> int:
    """Completed or refused rows older than KEEP_FINISHED; how many."""
    result = await session.execute(
        delete(DirectUpload).where(
            (DirectUpload.task_id.is_not(None)) | (DirectUpload.refusal_status.is_not(None)),
            DirectUpload.expires_at < datetime.now(UTC) - KEEP_FINISHED,
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
