"""Reprocessing a finished task: new outputs from its stored original, the old ones served meanwhile.

A reprocess puts a final task (`done`, `failed`, `cancelled`) back to `pending` with new processing
and a new *generation* (stored in the processing JSON). The worker runs it like any task; only the
names differ: outputs of generation g are `<input id>-g<g>[-<n>].<ext>` (core.storage's
output_name_for), so the files still served are never overwritten.

The switch is the worker's usual FINISH_DONE, one UPDATE: `outputs` changes from the old records to
the new ones atomically. Until then the row keeps the old records in `outputs` (the API keeps
showing and serving them), and `superseded_outputs` lists them too. Once the task is final again,
the sweep here removes the files of `superseded_outputs` that are not among `outputs`, then clears
it. So:

- a worker killed mid-reprocess loses nothing: the old records and files stay until a later attempt
  finishes (the lease sweep and redelivery work as for any task);
- a reprocess that fails leaves the old outputs in place (its `error` says why);
- a crash between removing files and clearing the column only repeats the removal.

Two reprocesses of the same task never overlap: only a final task can be reprocessed, checked under
the row's lock. The message id carries the generation (core.queue.message_id): attempts count from
0 again, and JetStream must not take the new message for a copy of the upload's.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, literal_column, null, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from core.processing.outputs import Processing
from core.storage import NOT_READY, Area, Storage, StorageUnavailable

log = logging.getLogger(__name__)

# `cancelled` is final too once task cancel lands; until then no row can hold it (the CHECK
# constraint refuses it), so naming it here changes nothing.
REPROCESSABLE = ("done", "failed", "cancelled")
NOT_REPROCESSABLE = (
    "The task is {status}: only a finished task (done, failed or cancelled) can be reprocessed. "
    "Wait until it ends, then ask again."
)
SUPERSEDED_BATCH = 100


class NotReprocessable(Exception):
    """The task is not final (still pending or processing, or being reprocessed)."""

    def __init__(self, status: str) -> None:
        super().__init__(NOT_REPROCESSABLE.format(status=status))
        self.status = status


@dataclasses.dataclass(frozen=True)
class Reprocessed:
    task_id: int
    generation: int


def with_focus_of(processing: Processing, stored: dict[str, Any]) -> Processing:
    """`processing`, keeping the upload's `focus` when the reprocess gives none (the point of
    interest belongs to the picture, not to the processing)."""
    if processing.focus is not None or not stored.get("focus"):
        return processing
    return dataclasses.replace(processing, focus=Processing.from_json(stored).focus)


async def lock_for_reprocess(session: AsyncSession, task_id: int, owner: str | None) -> ImageTask | None:
    """The task locked until the transaction ends; None when it is missing or another key's."""
    query = (
        select(ImageTask)
        .where(ImageTask.id == task_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if owner is not None:
        query = query.where(ImageTask.owner == owner)
    return await session.scalar(query)


async def reprocess_locked(
    session: AsyncSession, task: ImageTask, processing: Processing, priority: str | None = None
) -> Reprocessed:
    """Put a locked task (lock_for_reprocess) back to `pending` with `processing` (and `priority`,
    when given: a bulk job's tasks wait behind interactive uploads), in the caller's transaction;
    NotReprocessable unless it is final. The caller commits, then wakes the dispatcher."""
    if task.status not in REPROCESSABLE:
        raise NotReprocessable(task.status)
    generation = int(task.processing.get("generation", 0)) + 1
    new = dataclasses.replace(with_focus_of(processing, task.processing), generation=generation)
    # Old records kept on the row (and still served) until the worker's finish replaces them, and
    # the outputs a partly failed run made (core/task_controls.py), removed with them afterwards.
    # jsonb_typeof: a JSON `null` written through the ORM is no SQL NULL for COALESCE.
    superseded: ColumnElement[Any] = literal_column(
        "NULLIF("
        "(CASE WHEN jsonb_typeof(superseded_outputs) = 'array' THEN superseded_outputs ELSE '[]'::jsonb END)"
        " || (CASE WHEN jsonb_typeof(outputs) = 'array' THEN outputs ELSE '[]'::jsonb END)"
        " || (CASE WHEN jsonb_typeof(partial_outputs -> 'made') = 'array' THEN partial_outputs -> 'made'"
        " ELSE '[]'::jsonb END), '[]'::jsonb)"
    )
    await session.execute(
        update(ImageTask)
        .where(ImageTask.id == task.id)
        .values(
            status="pending",
            processing=new.to_json(),
            attempts=0,
            error=None,
            started_at=None,
            finished_at=None,
            queued_at=None,
            leased_until=None,
            callback_state=None,
            callback_attempts=0,
            callback_next_at=None,
            callback_error=None,
            superseded_outputs=superseded,
            partial_outputs=null(),
            priority=priority or task.priority,
        )
        .execution_options(synchronize_session=False)
    )
    return Reprocessed(task.id, generation)


def _final_superseded(limit: int) -> Select[tuple[int, Any, Any]]:
    return (
        select(ImageTask.id, ImageTask.outputs, ImageTask.superseded_outputs)
        .where(ImageTask.superseded_outputs.is_not(None), ImageTask.status.in_(REPROCESSABLE))
        .order_by(ImageTask.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


async def remove_superseded(session: AsyncSession, storage: Storage, *, limit: int = SUPERSEDED_BATCH) -> int:
    """Remove the old files of up to `limit` reprocessed tasks that are final again (those not among
    their outputs now), then forget them; commits. Rows another API process holds are skipped.
    Returns how many tasks were tidied."""
    if not storage.is_ready:
        raise StorageUnavailable(NOT_READY)
    async with session.begin():
        rows = (await session.execute(_final_superseded(limit))).all()
        for row in rows:
            await storage.remove(Area.PROCESSED, _left_behind(row))
        if rows:
            await session.execute(
                update(ImageTask)
                .where(ImageTask.id.in_([row.id for row in rows]))
                # SQL NULL, not the JSON `null` the ORM would write for None (the scan's index
                # and condition are on IS NOT NULL).
                .values(superseded_outputs=null())
                .execution_options(synchronize_session=False)
            )
    return len(rows)


def _left_behind(row: Row[Any]) -> list[str]:
    current = {output["file"] for output in row.outputs or ()}
    return sorted({output["file"] for output in row.superseded_outputs or ()} - current)
