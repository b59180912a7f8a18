"""The failed-tasks page (`/failed`): the caller's failed tasks, newest first, each with its reason
and a Retry button (a plain form post to `POST /tasks/{id}/retry`, guarded like every control by
api.same_origin). Keyset pages, as the gallery's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from api.deps import MAX_TASK_ID, CallerDep, SessionDep
from api.schemas import task_status
from api.templating import templates
from core import tasks
from core.models import TaskStatus

router = APIRouter(tags=["pages"], include_in_schema=False)

FAILED_PAGE_SIZE = 20


@router.get("/failed", response_class=HTMLResponse)
async def failed_tasks(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_TASK_ID)] = None,
) -> HTMLResponse:
    found = await tasks.newest(
        session, limit=FAILED_PAGE_SIZE, cursor=cursor, status=TaskStatus.FAILED, owner=caller
    )
    return templates.TemplateResponse(
        request,
        "failed.html",
        {
            "page": "failed",
            "items": [task_status(task) for task in found.tasks],
            "cursor": cursor,
            "next_cursor": found.next_cursor,
        },
    )
