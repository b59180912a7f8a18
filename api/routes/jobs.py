"""Bulk reprocess jobs: `POST /tasks/reprocess` makes one, `/jobs/...` follows and steers it.

The job's work happens in the API's reprocess loop (api/reprocess_runner.py, core/jobs.py); these
routes only make, read and change job rows, so any API replica answers for any job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, ServicesDep, SessionDep
from api.openapi import RETRY_AFTER, error, errors
from api.reprocess_schemas import JobPage, JobRequest, JobResponse
from api.request_body import BODY_TOO_LARGE, json_body
from api.routes.events import RETRY_MILLISECONDS, EventStream, EventStreams, sse_event
from api.routes.reprocess import PROCESSING_REQUIRED, requested_processing
from api.state import Services
from core import jobs, reprocessing, tasks
from core.models import FINAL_JOB_STATES, MAX_TASK_ID, JobState, JobTaskState, TaskStatus

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

JOB_NOT_FOUND = "Job not found"
MAX_JOBS_LISTED = 50
_JOB_ID = Path(description="The job's id (`job_id` in the answer that made it).", examples=[7])
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    **errors(401, 503),
    404: error("No such job, or another API key's (the two are answered alike).", JOB_NOT_FOUND),
}
JOB_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
    }
}


def job_response(found: jobs.Progress) -> JobResponse:
    job = found.job
    return JobResponse(
        job_id=job.id,
        state=JobState(job.state),
        filter=job.filter,
        matched=job.matched,
        queued=sum(
            found.count(state) for state in (JobTaskState.QUEUED, JobTaskState.DONE, JobTaskState.FAILED)
        ),
        done=found.count(JobTaskState.DONE),
        failed=found.count(JobTaskState.FAILED),
        skipped=found.count(JobTaskState.SKIPPED),
        in_flight=found.count(JobTaskState.QUEUED),
        max_in_flight=job.max_in_flight,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        events_url=f"/jobs/{job.id}/events",
    )


async def _progress(session: SessionDep, job_id: int, caller: str | None) -> jobs.Progress:
    found = await jobs.progress(session, job_id, caller) if 1 <= job_id <= MAX_TASK_ID else None
    if found is None:
        raise HTTPException(status_code=404, detail=JOB_NOT_FOUND)
    return found


@router.post(
    "/tasks/reprocess",
    response_model=JobResponse,
    status_code=202,
    openapi_extra=JOB_BODY,
    responses={
        **errors(401, 503),
        413: error("The body is over its limit.", BODY_TOO_LARGE),
        422: error(
            "No processing given, a bad processing or filter field (named in the message), or a filter "
            "matching more tasks than one job may take.",
            PROCESSING_REQUIRED,
        ),
    },
)
async def create_job(
    request: Request, services: ServicesDep, session: SessionDep, caller: CallerDep
) -> JobResponse:
    """Reprocess many tasks: a JSON body with `where` (a filter over the caller's finished tasks:
    `status`, `preset`, `uploaded_after`, `uploaded_before`) and the new processing (one of
    `preset`, `ops`, `outputs`, as for one task). Answers the job at once; it runs in the
    background, a few tasks at a time (`max_in_flight`), and goes on after an API restart."""
    body = await json_body(request, JobRequest)
    processing = requested_processing(services, body)
    where = body.where
    statuses = where.status if isinstance(where.status, list) else [where.status] if where.status else []
    finished = [status for status in reprocessing.REPROCESSABLE if status in TaskStatus._value2member_map_]
    if any(status not in finished for status in statuses):
        raise HTTPException(status_code=422, detail=jobs.NOT_FINAL_FILTER.format(allowed=", ".join(finished)))
    settings = services.settings
    try:
        job = await jobs.create(
            session,
            owner=caller,
            where=jobs.TaskFilter(
                owner=caller,
                statuses=tuple(statuses or finished),
                preset=where.preset,
                uploaded_after=where.uploaded_after,
                uploaded_before=where.uploaded_before,
            ),
            filter_as_given=where.model_dump(mode="json", exclude_none=True),
            processing=processing,
            max_in_flight=min(
                body.max_in_flight or settings.reprocess_job_max_in_flight,
                settings.reprocess_job_max_in_flight,
            ),
            max_tasks=settings.reprocess_job_max_tasks,
        )
    except jobs.JobTooLarge as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return job_response(await _progress(session, job.id, caller))


@router.get("/jobs", response_model=JobPage, responses=errors(401, 503))
async def list_jobs(session: SessionDep, caller: CallerDep) -> JobPage:
    """The caller's newest bulk reprocess jobs (at most 50)."""
    found = await jobs.newest(session, caller, limit=MAX_JOBS_LISTED)
    items = []
    for job in found:
        progress = await jobs.progress(session, job.id, caller)
        if progress is not None:
            items.append(job_response(progress))
    return JobPage(items=items)


@router.get("/jobs/{job_id}", response_model=JobResponse, responses=_JOB_ERRORS)
async def get_job(job_id: Annotated[int, _JOB_ID], session: SessionDep, caller: CallerDep) -> JobResponse:
    """A job's state and progress: tasks matched, queued so far, done, failed, skipped, in flight."""
    return job_response(await _progress(session, job_id, caller))


async def _control(session: SessionDep, job_id: int, caller: str | None, action: str) -> JobResponse:
    if not 1 <= job_id <= MAX_TASK_ID:
        raise HTTPException(status_code=404, detail=JOB_NOT_FOUND)
    try:
        found = await jobs.control(session, job_id, caller, action)
    except jobs.JobFinished as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    if not found:
        raise HTTPException(status_code=404, detail=JOB_NOT_FOUND)
    return job_response(await _progress(session, job_id, caller))


_CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    **_JOB_ERRORS,
    409: error("The job has ended (done or cancelled).", jobs.JOB_FINISHED.format(state="done")),
}


@router.post("/jobs/{job_id}/pause", response_model=JobResponse, responses=_CONTROL_ERRORS)
async def pause_job(job_id: Annotated[int, _JOB_ID], session: SessionDep, caller: CallerDep) -> JobResponse:
    """Queue no more of the job's tasks until it is resumed (those in flight finish)."""
    return await _control(session, job_id, caller, "pause")


@router.post("/jobs/{job_id}/resume", response_model=JobResponse, responses=_CONTROL_ERRORS)
async def resume_job(job_id: Annotated[int, _JOB_ID], session: SessionDep, caller: CallerDep) -> JobResponse:
    """Go on queueing a paused job's tasks."""
    return await _control(session, job_id, caller, "resume")


@router.post("/jobs/{job_id}/cancel", response_model=JobResponse, responses=_CONTROL_ERRORS)
async def cancel_job(job_id: Annotated[int, _JOB_ID], session: SessionDep, caller: CallerDep) -> JobResponse:
    """Stop the job for good: tasks not queued yet stay as they are; those in flight finish (and
    are counted)."""
    return await _control(session, job_id, caller, "cancel")


async def _read_progress(services: Services, job_id: int, caller: str | None) -> jobs.Progress | None:
    async with services.sessions() as session:
        return await jobs.progress(session, job_id, caller)


async def _progress_events(
    request: Request, services: Services, streams: EventStreams, first: JobResponse, caller: str | None
) -> AsyncIterator[str]:
    event_id = 1
    body = first.model_dump_json()
    yield sse_event("progress", body, event_id, retry_ms=RETRY_MILLISECONDS)
    ended = first.state in FINAL_JOB_STATES and first.in_flight == 0
    started = last_write = asyncio.get_running_loop().time()
    clock = asyncio.get_running_loop().time
    while not ended and clock() - started < streams.lifetime_seconds:
        await asyncio.sleep(streams.poll_seconds)
        if await request.is_disconnected():
            return
        try:
            found = await _read_progress(services, first.job_id, caller)
        except tasks.DatabaseUnavailable as exc:
            log.warning("database unavailable while streaming job %s: %s", first.job_id, exc)
            found = None
        except Exception as exc:  # an outage seen through a session: keep the stream, look again
            log.warning("could not read job %s: %s", first.job_id, exc)
            found = None
        if found is not None:
            latest = job_response(found)
            text = latest.model_dump_json()
            if text != body:
                body, event_id = text, event_id + 1
                ended = latest.state in FINAL_JOB_STATES and latest.in_flight == 0
                yield sse_event("progress", body, event_id)
                last_write = clock()
                continue
        if clock() - last_write >= streams.keepalive_seconds:
            yield ": keep-alive\n\n"
            last_write = clock()


_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"const": "progress"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/JobResponse"},
        },
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`event: progress` with the `GET /jobs/{job_id}` body as `data`, at once and on "
            "every change, until the job has ended and nothing of it is in flight.",
            "content": {"text/event-stream": {"itemSchema": _EVENT}},
        },
        **_JOB_ERRORS,
        503: {
            **errors(503)[503],
            "description": "PostgreSQL cannot be reached, or this server has its most live streams open.",
            "headers": RETRY_AFTER,
        },
    },
)
async def job_events(
    job_id: Annotated[int, _JOB_ID],
    request: Request,
    session: SessionDep,
    services: ServicesDep,
    caller: CallerDep,
) -> StreamingResponse:
    """Server-Sent Events of the job's progress (owner-scoped like `GET /jobs/{job_id}`)."""
    first = job_response(await _progress(session, job_id, caller))
    await session.close()  # each poll opens its own session; none is held while the stream lasts
    streams: EventStreams = request.app.state.event_streams
    refusal = streams.take(caller)
    if refusal is not None:
        raise refusal
    return EventStream(_progress_events(request, services, streams, first, caller), streams, caller)
