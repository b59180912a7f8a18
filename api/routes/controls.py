"""The owner's controls on one task: `POST /tasks/{id}/retry` and `POST /tasks/{id}/cancel`.

Validate (the caller's task, 404 otherwise; a same-site request), decide in PostgreSQL
(core.task_controls), publish a retried task, answer the task's status. A browser's form post
(Accept: text/html) is sent back to the task's page with 303, or shown a page saying why not.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from api.deps import TASK_NOT_FOUND, ServicesDep, SessionDep, TaskDep
from api.openapi import error, errors, sentence_or_list_422
from api.same_origin import CROSS_SITE, refuse_cross_site
from api.schemas import TaskStatusResponse, result_url, task_status
from api.templating import templates, wants_html
from core import task_controls
from core.models import ImageTask

router = APIRouter(tags=["tasks"], dependencies=[Depends(refuse_cross_site)])

_REFUSED_TITLE = "Not possible now"
RETRY_OUTPUTS = ("all", "failed")
BAD_RETRY_OUTPUTS = f"`outputs` must be one of: {', '.join(RETRY_OUTPUTS)}."


def _refused(request: Request, task_id: int, status_code: int, message: str) -> Response:
    if wants_html(request):
        return templates.TemplateResponse(
            request,
            "error.html",
            {"message": message, "title": _REFUSED_TITLE, "back_url": result_url(task_id)},
            status_code=status_code,
        )
    return JSONResponse({"detail": message}, status_code=status_code)


async def _answer(request: Request, session: SessionDep, task: ImageTask, status_code: int) -> Response:
    if wants_html(request):
        return RedirectResponse(result_url(task.id), status_code=303)
    await session.refresh(task)
    return JSONResponse(task_status(task).model_dump(mode="json"), status_code=status_code)


_BAD_OUTPUTS_OR_ID = sentence_or_list_422(
    f"`outputs` is neither `all` nor `failed` (`{BAD_RETRY_OUTPUTS}`); or a task id that is not a whole "
    "number.",
    html=True,
)

_CONTROL_ERRORS = {
    **errors(401, 404, 503),
    403: error("A browser sent this for another site's page (CSRF).", CROSS_SITE, html=True),
}


@router.post(
    "/tasks/{task_id}/retry",
    status_code=202,
    response_model=TaskStatusResponse,
    responses={
        202: {"description": "The task is `pending` again, its attempts reset, and queued."},
        303: {"description": "Browser form posts are sent back to the task's result page."},
        409: error("The task is not `failed`.", task_controls.NOT_RETRYABLE.format(status="done"), html=True),
        422: _BAD_OUTPUTS_OR_ID,
        **_CONTROL_ERRORS,
    },
)
async def retry_task(
    request: Request,
    task: TaskDep,
    session: SessionDep,
    services: ServicesDep,
    outputs: Annotated[
        str,
        Query(
            description="`all`: every output is made again. `failed`: only the outputs that failed; "
            "those the failed run made are kept (all are made again when it made none).",
            # Checked below (422 with a sentence, as every bad field), not by FastAPI (a list).
            json_schema_extra={"enum": list(RETRY_OUTPUTS)},
        ),
    ] = "all",
) -> Response:
    """Run a `failed` task again from its stored original, its attempts counted from 0; with
    `?outputs=failed`, only the outputs that failed.

    Published at once; if NATS is unavailable the task stays queued in PostgreSQL and the outbox
    dispatcher publishes it when NATS is back, so a retry is never lost. 409 for any other status."""
    if outputs not in RETRY_OUTPUTS:
        return _refused(request, task.id, 422, BAD_RETRY_OUTPUTS)
    try:
        await task_controls.retry(session, task.id, failed_outputs_only=outputs == "failed")
    except task_controls.ControlRefused as exc:
        return _refused(request, task.id, 409, str(exc))
    except task_controls.TaskGone:
        return _refused(request, task.id, 404, TASK_NOT_FOUND)
    await services.dispatcher.dispatch_committed()
    return await _answer(request, session, task, 202)


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=TaskStatusResponse,
    responses={
        200: {"description": "The task is `cancelled` (now, or it already was)."},
        303: {"description": "Browser form posts are sent back to the task's result page."},
        409: error(
            "The task is already `done` or `failed`.",
            task_controls.NOT_CANCELLABLE.format(status="done"),
            html=True,
        ),
        **_CONTROL_ERRORS,
    },
)
async def cancel_task(request: Request, task: TaskDep, session: SessionDep) -> Response:
    """Cancel a `pending` or `processing` task: a pending one never runs; a processing one is
    abandoned at its worker's next heartbeat and what it made is removed. Repeating it on a
    cancelled task answers 200 again; on a `done` or `failed` one, 409."""
    try:
        _, cancelled = await task_controls.cancel(session, task.id)
    except task_controls.ControlRefused as exc:
        return _refused(request, task.id, 409, str(exc))
    except task_controls.TaskGone:
        return _refused(request, task.id, 404, TASK_NOT_FOUND)
    if wants_html(request):
        return RedirectResponse(result_url(task.id), status_code=303)
    # The row as the cancel left it, not re-read: a reprocess committed since must not show here
    # as a 200 saying "pending".
    return JSONResponse(task_status(cancelled).model_dump(mode="json"), status_code=200)
