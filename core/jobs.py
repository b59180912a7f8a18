"""Bulk reprocess jobs: every statement on `reprocess_jobs` and `reprocess_job_tasks`.

A job is made with the ids of the tasks its filter matches at that moment (at most
REPROCESS_JOB_MAX_TASKS: a larger match is refused, to be narrowed by date), each `waiting`. Then
steps, run by any API process's reprocess loop (api/reprocess_runner.py), take it forward. A step:

1. locks the job row (`FOR UPDATE SKIP LOCKED`: the row lock is the job's lease; a replica that
   finds it held moves on, and one that dies mid-step releases it with its connection);
2. settles its `queued` tasks that are final again (`done`, or `failed` for any other end; a
   deleted task counts as failed);
3. while the job is `running`, queues its next `waiting` tasks in task id order (keyset), as many
   as keep at most `max_in_flight` of them queued at once: the throttle that leaves the workers to
   interactive uploads between them. A task that is gone or not finished then is `skipped`;
4. marks the job `done` once nothing is waiting or in flight;

and commits, then returns what to publish. The tasks are committed before they are published, so
an API killed in between leaves them to the outbox relay. All state is in PostgreSQL: after a
restart the next step of any API goes on where the last one stopped.

Pausing stops step 3 (in-flight tasks finish and are counted); resuming starts it again.
Cancelling stops it for good: waiting tasks stay `waiting` (never queued), in-flight ones finish.

A job that ended (`done` or `cancelled`) more than JOB_RETENTION_SECONDS ago is deleted, with its
task list, by the API's sweep (`delete_ended`): the tasks themselves stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import reprocessing
from core.models import (
    FINAL_JOB_STATES,
    ImageTask,
    JobState,
    JobTaskState,
    ReprocessJob,
    ReprocessJobTask,
)
from core.processing.outputs import Processing

# The priority of the tasks a job queues (api/dispatcher.py), so that interactive uploads go first;
# core.reprocessing.reprocess_locked sets it on the row with the rest of the reprocess.
JOB_TASK_PRIORITY = "bulk"

TOO_MANY = (
    "The filter matches {matched:,} tasks; a job may reprocess at most {limit:,} "
    "(REPROCESS_JOB_MAX_TASKS). Narrow it, for example with `uploaded_before` / `uploaded_after`."
)
NOT_FINAL_FILTER = "`where.status` may only name finished statuses: {allowed}."
JOB_FINISHED = "The job is {state}; it can no longer be paused, resumed or cancelled."


class JobTooLarge(Exception):
    pass


class JobFinished(Exception):
    def __init__(self, state: str) -> None:
        super().__init__(JOB_FINISHED.format(state=state))


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a job matches: the owner's (when API keys are on), finished, and all the rest given."""

    owner: str | None
    statuses: tuple[str, ...]
    preset: str | None = None
    uploaded_after: datetime | None = None
    uploaded_before: datetime | None = None

    def condition(self) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = [ImageTask.status.in_(self.statuses)]
        if self.owner is not None:
            conditions.append(ImageTask.owner == self.owner)
        if self.preset is not None:
            # Any output made with that preset (JSONB containment: the index-free scan stays one pass).
            conditions.append(ImageTask.processing["outputs"].contains([{"preset": self.preset}]))
        if self.uploaded_after is not None:
            conditions.append(ImageTask.upload_time >= self.uploaded_after)
        if self.uploaded_before is not None:
            conditions.append(ImageTask.upload_time < self.uploaded_before)
        return and_(*conditions)


@dataclass(frozen=True)
class Progress:
    job: ReprocessJob
    counts: dict[str, int]

    def count(self, state: JobTaskState) -> int:
        return self.counts.get(state.value, 0)


async def create(
    session: AsyncSession,
    *,
    owner: str | None,
    where: TaskFilter,
    filter_as_given: dict[str, Any],
    processing: Processing,
    max_in_flight: int,
    max_tasks: int,
) -> ReprocessJob:
    """Make a job of the tasks `where` matches now; JobTooLarge over `max_tasks`. Commits."""
    async with session.begin():
        matched = await session.scalar(select(func.count()).select_from(ImageTask).where(where.condition()))
        assert matched is not None
        if matched > max_tasks:
            raise JobTooLarge(TOO_MANY.format(matched=matched, limit=max_tasks))
        job = ReprocessJob(
            owner=owner,
            state=JobState.RUNNING if matched else JobState.DONE,
            filter=filter_as_given,
            processing=processing.to_json(),
            matched=matched,
            max_in_flight=max_in_flight,
            finished_at=None if matched else func.now(),
        )
        session.add(job)
        await session.flush()
        # The match is taken once: tasks uploaded (or finished) later are not part of this job.
        await session.execute(
            insert(ReprocessJobTask).from_select(
                ["job_id", "task_id", "state"],
                select(literal(job.id), ImageTask.id, literal(JobTaskState.WAITING.value)).where(
                    where.condition()
                ),
            )
        )
    await session.refresh(job)
    return job


async def progress(session: AsyncSession, job_id: int, owner: str | None) -> Progress | None:
    """The job and its counts by task state; None when it is missing or another key's."""
    query = select(ReprocessJob).where(ReprocessJob.id == job_id).execution_options(populate_existing=True)
    if owner is not None:
        query = query.where(ReprocessJob.owner == owner)
    job = await session.scalar(query)
    if job is None:
        return None
    rows = await session.execute(
        select(ReprocessJobTask.state, func.count())
        .where(ReprocessJobTask.job_id == job_id)
        .group_by(ReprocessJobTask.state)
    )
    return Progress(job, {state: count for state, count in rows.tuples()})


async def newest(session: AsyncSession, owner: str | None, *, limit: int) -> list[ReprocessJob]:
    query = select(ReprocessJob).order_by(ReprocessJob.id.desc()).limit(limit)
    if owner is not None:
        query = query.where(ReprocessJob.owner == owner)
    return list(await session.scalars(query))


_NEXT_STATE = {
    "pause": ({JobState.RUNNING, JobState.PAUSED}, JobState.PAUSED),
    "resume": ({JobState.RUNNING, JobState.PAUSED}, JobState.RUNNING),
    "cancel": ({JobState.RUNNING, JobState.PAUSED, JobState.CANCELLED}, JobState.CANCELLED),
}


async def control(session: AsyncSession, job_id: int, owner: str | None, action: str) -> bool:
    """Pause, resume or cancel the job (repeating one is harmless); False when it is missing or
    another key's, JobFinished when it has ended. Commits."""
    allowed, new_state = _NEXT_STATE[action]
    async with session.begin():
        query = select(ReprocessJob).where(ReprocessJob.id == job_id).with_for_update()
        if owner is not None:
            query = query.where(ReprocessJob.owner == owner)
        job = await session.scalar(query.execution_options(populate_existing=True))
        if job is None:
            return False
        if job.state not in allowed:
            raise JobFinished(job.state)
        if job.state != new_state:
            job.state = new_state
            job.updated_at = func.now()
            if new_state in FINAL_JOB_STATES:
                job.finished_at = func.now()
    return True


# Jobs with something for a step to do: running or paused (tasks in flight to settle), or
# cancelled with tasks still in flight.
_STEPPABLE = text(
    "SELECT id FROM reprocess_jobs j WHERE state IN ('running', 'paused')"
    " OR (state = 'cancelled' AND EXISTS ("
    "   SELECT 1 FROM reprocess_job_tasks t WHERE t.job_id = j.id AND t.state = 'queued'))"
    " ORDER BY updated_at LIMIT :limit"
)
_SETTLE = text(
    "UPDATE reprocess_job_tasks jt SET state = CASE WHEN t.status = 'done' THEN 'done' ELSE 'failed' END"
    " FROM image_tasks t"
    " WHERE jt.job_id = :job AND jt.state = 'queued' AND t.id = jt.task_id"
    " AND t.status IN ('done', 'failed', 'cancelled')"
)
_SETTLE_DELETED = text(
    "UPDATE reprocess_job_tasks jt SET state = 'failed'"
    " WHERE jt.job_id = :job AND jt.state = 'queued'"
    " AND NOT EXISTS (SELECT 1 FROM image_tasks t WHERE t.id = jt.task_id)"
)


async def steppable(session: AsyncSession, *, limit: int = 100) -> list[int]:
    return list(await session.scalars(_STEPPABLE, {"limit": limit}))


async def step(session: AsyncSession, job_id: int) -> list[reprocessing.Reprocessed] | None:
    """One step of the job (see the module's docstring); the tasks to publish now. None when
    another process holds the job. Commits."""
    async with session.begin():
        job = await session.scalar(
            select(ReprocessJob)
            .where(ReprocessJob.id == job_id)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
        if job is None:
            return None
        changed = (await session.execute(_SETTLE, {"job": job_id})).rowcount or 0  # type: ignore[attr-defined]
        changed += (await session.execute(_SETTLE_DELETED, {"job": job_id})).rowcount or 0  # type: ignore[attr-defined]
        queued = await _queue_next(session, job) if job.state == JobState.RUNNING else []
        changed += len(queued)
        if job.state == JobState.RUNNING and not await _has_tasks(
            session, job_id, (JobTaskState.WAITING, JobTaskState.QUEUED)
        ):
            job.state = JobState.DONE
            job.finished_at = func.now()
            changed += 1
        if changed:
            job.updated_at = func.now()
    return queued


async def _has_tasks(session: AsyncSession, job_id: int, states: tuple[JobTaskState, ...]) -> bool:
    found = await session.scalar(
        select(ReprocessJobTask.task_id)
        .where(ReprocessJobTask.job_id == job_id, ReprocessJobTask.state.in_(states))
        .limit(1)
    )
    return found is not None


async def _queue_next(session: AsyncSession, job: ReprocessJob) -> list[reprocessing.Reprocessed]:
    in_flight = await session.scalar(
        select(func.count())
        .select_from(ReprocessJobTask)
        .where(ReprocessJobTask.job_id == job.id, ReprocessJobTask.state == JobTaskState.QUEUED)
    )
    room = job.max_in_flight - (in_flight or 0)
    if room <= 0:
        return []
    waiting = list(
        await session.scalars(
            select(ReprocessJobTask.task_id)
            .where(ReprocessJobTask.job_id == job.id, ReprocessJobTask.state == JobTaskState.WAITING)
            .order_by(ReprocessJobTask.task_id)
            .limit(room)
        )
    )
    processing = Processing.from_json(job.processing)
    queued: list[reprocessing.Reprocessed] = []
    for task_id in waiting:
        task = await reprocessing.lock_for_reprocess(session, task_id, job.owner)
        state = JobTaskState.SKIPPED
        if task is not None and task.status in reprocessing.REPROCESSABLE:
            queued.append(await reprocessing.reprocess_locked(session, task, processing, JOB_TASK_PRIORITY))
            state = JobTaskState.QUEUED
        await session.execute(
            update(ReprocessJobTask)
            .where(ReprocessJobTask.job_id == job.id, ReprocessJobTask.task_id == task_id)
            .values(state=state)
        )
    return queued


async def delete_ended(session: AsyncSession, *, older_than: timedelta, limit: int) -> int:
    """Delete up to `limit` jobs that ended more than `older_than` ago, their task lists with them
    (ON DELETE CASCADE); how many. Jobs a step holds are skipped (next time). Commits."""
    ended = (
        select(ReprocessJob.id)
        .where(
            ReprocessJob.state.in_([state.value for state in FINAL_JOB_STATES]),
            ReprocessJob.finished_at < func.now() - older_than,
        )
        .order_by(ReprocessJob.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with session.begin():
        deleted = await session.scalars(
            delete(ReprocessJob).where(ReprocessJob.id.in_(ended)).returning(ReprocessJob.id)
        )
        return len(deleted.all())
