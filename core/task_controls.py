"""The owner's controls on a task: retry a `failed` one, cancel a `pending` or `processing` one.

Each is one conditional UPDATE, so PostgreSQL decides every race: of two retries at once one finds
the row still `failed` and the other finds it `pending` (refused); of a cancel and the worker's
finish, whichever commits first holds and the other matches no row (the worker's finish requires
`pending` or `processing`, the cancel the same). A refused retry reads the status afterwards only
to say why.

A cancel decides on the row locked (`FOR UPDATE`) and answers the row as it left it, before its
commit lets anything else at it: a reprocess (allowed on a cancelled task) committed just after
would otherwise show as a 200 saying "pending", and a refusal read afterwards could name a status
the row did not have when the cancel was decided.

A failed run that made some of a task's outputs records them (`partial_outputs`, written by the
worker's finish), so a retry may make only the failed ones again (`?outputs=failed`).

A retried row is left unqueued (`queued_at` NULL), like a new upload: the API publishes it at once,
and if NATS is away the outbox relay does later, so a retry is never lost. Its `retries` count goes
into the message id (core.queue.message_id), as its attempts start again at 0.
"""

from __future__ import annotations

import enum

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from core.tasks import FINISHED_SET, mapping_errors

NOT_RETRYABLE = "Only a failed task can be retried; this one is {status}."
NOT_CANCELLABLE = "This task is already {status}; only a pending or processing task can be cancelled."


class ControlRefused(Exception):
    """The task's status does not allow this control (answered 409 with this message)."""


class TaskGone(Exception):
    """The task was deleted while the control was being decided."""


class Cancelled(enum.Enum):
    NOW = "now"
    ALREADY = "already"


_STATUS = text("SELECT status FROM image_tasks WHERE id = :id")

# What the failed run left in the row goes, as for a new upload. The placeholder stays (same file),
# and so do the outputs: a failed task has none, unless a reprocess of it failed, whose previous
# outputs are still served until the retried run replaces them (core/reprocessing.py).
# `partial_outputs` (what the failed run made, and what it could not) stays only when just the
# failed outputs are retried: the worker then renders those and keeps the rest (worker/consumer.py).
# Retried whole, every output is made again, under the same names, so the made files are replaced.
_RETRY = """\
UPDATE image_tasks
SET status = 'pending', attempts = 0, retries = retries + 1, error = NULL, started_at = NULL,
    finished_at = NULL, leased_until = NULL, queued_at = NULL, {partial}
    callback_state = NULL, callback_attempts = 0, callback_next_at = NULL, callback_error = NULL
WHERE id = :id AND status = 'failed'
RETURNING retries"""
_RETRY_ALL = text(_RETRY.format(partial="partial_outputs = NULL,"))
_RETRY_FAILED_OUTPUTS = text(_RETRY.format(partial=""))

# A worker holding a `processing` row learns of it at its next lease renewal (which requires
# `processing`); a `pending` row is no longer claimable, so its message is acknowledged unused.
_CANCEL = text(
    f"UPDATE image_tasks SET status = 'cancelled', error = NULL, {FINISHED_SET}"
    " WHERE id = :id AND status IN ('pending', 'processing') RETURNING id"
)


@mapping_errors
async def retry(session: AsyncSession, task_id: int, *, failed_outputs_only: bool = False) -> int:
    """Put a `failed` task back to `pending` with its attempts reset, committed; its new count of
    retries (for the message id). With `failed_outputs_only`, the outputs its run made are kept
    and only the others made again (all of them when it made none). ControlRefused for any other
    status, TaskGone for no row."""
    statement = _RETRY_FAILED_OUTPUTS if failed_outputs_only else _RETRY_ALL
    retries = await session.scalar(statement, {"id": task_id})
    await session.commit()
    if retries is None:
        status = await _status(session, task_id)
        raise ControlRefused(NOT_RETRYABLE.format(status=status))
    return retries


@mapping_errors
async def cancel(session: AsyncSession, task_id: int) -> tuple[Cancelled, ImageTask]:
    """Cancel a `pending` or `processing` task, committed; with the row as the cancel left it. A
    cancelled one stays so (ALREADY: a repeated request is no error); ControlRefused for `done` or
    `failed`, TaskGone for no row."""
    task = await session.scalar(
        select(ImageTask)
        .where(ImageTask.id == task_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    refusal: Exception | None = None
    outcome = Cancelled.ALREADY
    if task is None:
        refusal = TaskGone(task_id)
    elif task.status in ("pending", "processing"):
        await session.execute(_CANCEL, {"id": task_id})
        await session.refresh(task)  # still under the lock: the row as this cancel made it
        outcome = Cancelled.NOW
    elif task.status != "cancelled":
        refusal = ControlRefused(NOT_CANCELLABLE.format(status=task.status))
    # Committed either way (a refusal wrote nothing): a rollback would expire the caller's rows.
    await session.commit()
    if refusal is not None:
        raise refusal
    assert task is not None
    return outcome, task


async def _status(session: AsyncSession, task_id: int) -> str:
    status = await session.scalar(_STATUS, {"id": task_id})
    await session.commit()
    if status is None:
        raise TaskGone(task_id)
    return status
