"""The HTML side: the upload form and a task's result page (Jinja2, autoescaped)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.deps import ServicesDep, TaskDep
from api.schemas import processed_url, status_url
from api.templating import templates
from core.formats import ALLOWED_FORMATS
from core.models import FINAL_STATUSES

router = APIRouter(tags=["pages"], include_in_schema=False)

# The result page reloads itself this often until the task is done or failed.
REFRESH_SECONDS = 2


@router.get("/", response_class=HTMLResponse)
async def upload_form(request: Request, services: ServicesDep) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "max_upload_mb": services.settings.max_upload_bytes / (1024 * 1024),
            "formats": ", ".join(fmt if fmt != "WEBP" else "WebP" for fmt in ALLOWED_FORMATS),
            "accept": "image/jpeg,image/png,image/gif,image/webp,image/bmp",
        },
    )


@router.get("/result/{task_id}", response_class=HTMLResponse)
async def result_page(request: Request, task: TaskDep) -> HTMLResponse:
    final = task.status in FINAL_STATUSES
    return templates.TemplateResponse(
        request,
        "result.html",
        {
            "task": task,
            "image_url": processed_url(task),
            "status_url": status_url(task.id),
            "refresh_seconds": None if final else REFRESH_SECONDS,
        },
    )
