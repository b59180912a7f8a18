"""Reprocessing one task: `POST /tasks/{task_id}/reprocess` (core/reprocessing.py has the rules)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from api.deps import TASK_NOT_FOUND, CallerDep, ServicesDep, SessionDep, TaskDep
from api.openapi import error, errors, sentence_or_list_422
from api.reprocess_schemas import ProcessingRequest, ReprocessResponse
from api.request_body import BODY_TOO_LARGE, json_body
from api.schemas import status_url
from core import reprocessing
from core.formats import ImageRejected, probe_image
from core.models import TaskStatus
from core.processing.cost import cost_refusal, output_frames
from core.processing.forms import resolve
from core.processing.operations import ProcessingInvalid
from core.processing.outputs import Processing
from core.storage import StoredFileMissing

router = APIRouter(tags=["tasks"])

REPROCESS_ACCEPTED = "Reprocess queued; the current outputs are served until the new ones are done."
PROCESSING_REQUIRED = "Send one of `preset`, `ops` and `outputs`: what to make instead."
ORIGINAL_GONE = "The task's original is no longer stored, so it cannot be reprocessed."
ORIGINAL_UNUSABLE = "The task's original can no longer be read: {reason}"

PROCESSING_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProcessingRequest"}}},
    }
}


_UNPROCESSABLE = sentence_or_list_422(
    "No processing given, or a bad processing field (named in the message); or a task id that is not a "
    "whole number."
)


def requested_processing(services: ServicesDep, body: ProcessingRequest) -> Processing:
    """The body's processing fields, validated and resolved like the upload form's; 422 naming
    the field otherwise."""
    if body.preset is None and body.ops is None and body.outputs is None:
        raise HTTPException(status_code=422, detail=PROCESSING_REQUIRED)
    settings = services.settings
    try:
        return resolve(
            preset=body.preset,
            ops=_as_text(body.ops),
            outputs=_as_text(body.outputs),
            presets=services.presets,
            watermark_text=settings.watermark_text,
            focus=body.focus,
            watermark_images=settings.watermark_images,
        )
    except ProcessingInvalid as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def _as_text(value: Any) -> str | None:
    """A JSON field as the upload form carries it, so one parser (with its limits) reads both."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


async def _check_cost(
    services: ServicesDep, input_name: str, processing: Processing, body: ProcessingRequest
) -> None:
    """The upload's cost check, on the stored original's header (its frames are not in the row)."""
    settings = services.settings
    try:
        async with services.storage.local_upload_path(input_name) as source:
            info = await asyncio.to_thread(
                probe_image, source, max_pixels=settings.max_image_pixels, max_frames=settings.max_frames
            )
    except StoredFileMissing:
        raise HTTPException(status_code=409, detail=ORIGINAL_GONE) from None
    except ImageRejected as exc:
        raise HTTPException(status_code=409, detail=ORIGINAL_UNUSABLE.format(reason=exc)) from None
    for output in processing.outputs:
        frames = output_frames(output, info.format, info.frames)
        refused = cost_refusal(output, info.width, info.height, frames, limit=settings.max_output_pixels)
        if refused:
            field = (
                f"outputs.{output.name}" if body.outputs is not None else "preset" if output.preset else "ops"
            )
            raise HTTPException(status_code=422, detail=f"`{field}`: {refused}")


async def _reprocess(
    session: SessionDep, task_id: int, caller: str | None, processing: Processing
) -> reprocessing.Reprocessed | None:
    async with session.begin():
        task = await reprocessing.lock_for_reprocess(session, task_id, caller)
        if task is None:
            return None
        return await reprocessing.reprocess_locked(session, task, processing)


@router.post(
    "/tasks/{task_id}/reprocess",
    response_model=ReprocessResponse,
    status_code=202,
    openapi_extra=PROCESSING_BODY,
    responses={
        **errors(401, 404, 503),
        409: error(
            "The task is not finished (pending, processing, or being reprocessed), or its original is gone.",
            reprocessing.NOT_REPROCESSABLE.format(status="processing"),
        ),
        413: error("The body is over its limit.", BODY_TOO_LARGE),
        422: _UNPROCESSABLE,
    },
)
async def reprocess_task(
    task: TaskDep,
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    caller: CallerDep,
) -> ReprocessResponse:
    """Make the task's outputs again from its stored original, with new processing: a JSON body
    with one of `preset`, `ops` or `outputs` (as the upload's fields), and optionally `focus`.

    The current outputs stay listed and served until the new ones are done; then they are replaced
    in one step and their files removed. A reprocess that fails leaves them in place. Only a
    finished task (`done`, `failed`, `cancelled`) can be reprocessed: otherwise 409.
    """
    task_id, status, input_name = task.id, task.status, task.input_name
    # The read ends here: no connection is held while the body arrives and the original is probed;
    # the change runs in a transaction of its own, which checks the status again under the lock.
    await session.rollback()
    body = await json_body(request, ProcessingRequest)
    processing = requested_processing(services, body)
    if status not in reprocessing.REPROCESSABLE:
        raise HTTPException(status_code=409, detail=reprocessing.NOT_REPROCESSABLE.format(status=status))
    await _check_cost(services, input_name, processing, body)
    try:
        done = await _reprocess(session, task_id, caller, processing)
    except reprocessing.NotReprocessable as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    if done is None:
        raise HTTPException(status_code=404, detail=TASK_NOT_FOUND)
    await services.dispatcher.dispatch_committed()
    return ReprocessResponse(
        task_id=task_id,
        status=TaskStatus.PENDING,
        generation=done.generation,
        message=REPROCESS_ACCEPTED,
        status_url=status_url(task_id),
    )
