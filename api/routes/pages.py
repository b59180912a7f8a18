"""The HTML side: the upload form, a task's live result page and the gallery (Jinja2, autoescaped).

Every page works without JavaScript (plain form post, a refreshing result page, plain links); the
scripts in api/static/ only add to that: several files with progress, live status over
`/tasks/{id}/events`, falling back to polling `/status`.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.deps import MAX_TASK_ID, TASK_NOT_FOUND, CallerDep, ServicesDep, SessionDep, visible_task
from api.response_headers import page_csp
from api.routes.originals import original_url
from api.schemas import result_url, status_url, task_status
from api.templating import templates, wants_html
from core import tasks
from core.formats import ALLOWED_FORMATS, CONTENT_TYPES, READ_ONLY_FORMATS
from core.models import FINAL_STATUSES, ImageTask

router = APIRouter(tags=["pages"], include_in_schema=False)

# Without JavaScript, the result page reloads itself this often until the task is done or failed.
REFRESH_SECONDS = 2
GALLERY_PAGE_SIZE = 24


def byte_size(size: int) -> str:
    """A file size for people (binary units, as file managers show them); result.js mirrors it."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def image_facts(width: Any, height: Any, size: Any) -> str | None:
    """ "640×480 px · 51.2 KiB", or None unless all three are whole numbers above 0 (a task taken
    over from the original design without its upload knows none of them: 0)."""
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (width, height, size)):
        return None
    if min(width, height, size) <= 0:
        return None
    return f"{width}×{height} px · {byte_size(size)}"


def output_facts(status: dict[str, Any]) -> str | None:
    # `/status` may list what was made (`outputs`, each with width, height and size_bytes); older
    # answers do not, and the page then shows no figures for the processed image.
    outputs = status.get("outputs")
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return None
    first = outputs[0]
    return image_facts(first.get("width"), first.get("height"), first.get("size_bytes"))


# Formats most browsers cannot show (only Safari shows HEIC, and TIFF): the result page says so
# instead of a broken image; the outputs are JPEG or PNG.
_NOT_SHOWN_BY_BROWSERS = frozenset(CONTENT_TYPES[fmt] for fmt in READ_ONLY_FORMATS)
ORIGINAL_NOT_SHOWN = "Most browsers cannot show this format; the processed image is JPEG or PNG."

# As people know the formats; a phone's HEIF photo is a ".heic".
_FORMAT_LABELS = {"WEBP": "WebP", "HEIF": "HEIC"}
# Browsers often give a HEIC file no media type (or image/heif): its extensions are listed too.
_ACCEPT = ",".join(
    [*(CONTENT_TYPES[fmt] for fmt in ALLOWED_FORMATS), "image/heif", ".heic", ".heif", ".tif", ".tiff"]
)


@router.get("/", response_class=HTMLResponse)
async def upload_form(request: Request, services: ServicesDep) -> HTMLResponse:
    settings = services.settings
    headers = None
    if settings.storage_backend == "s3":  # the page's script POSTs big files to the store itself
        headers = {"Content-Security-Policy": page_csp(connect_also=_s3_origin(settings.s3_endpoint_url))}
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "page": "upload",
            "max_upload_mb": services.settings.max_upload_bytes / (1024 * 1024),
            "formats": ", ".join(_FORMAT_LABELS.get(fmt, fmt) for fmt in ALLOWED_FORMATS),
            "accept": _ACCEPT,
            # upload.js sends big files straight to the bucket on s3 (direct_upload.js).
            "storage_backend": settings.storage_backend,
            "presets": [
                {"name": name, "description": preset.description} for name, preset in services.presets.items()
            ],
        },
        headers=headers,
    )


def _s3_origin(endpoint_url: str) -> str:
    """Where presigned POSTs go: the configured endpoint's origin, or AWS's S3 hosts."""
    if not endpoint_url:
        return "https://*.amazonaws.com"
    parts = urlsplit(endpoint_url)
    return f"{parts.scheme}://{parts.netloc}"


def _is_task_id(ref: str) -> bool:
    return ref.isascii() and ref.isdigit()


@router.get("/result/{ref}", response_class=HTMLResponse)
async def result_page(
    request: Request,
    ref: Annotated[str, Path(max_length=255)],
    session: SessionDep,
    caller: CallerDep,
    services: ServicesDep,
) -> Response:
    """A task's page by its id; or, by a file name (the original design's bookmarks, such as
    `/result/test_image.JPG`), a 303 to the page of the newest task uploaded under that name.

    A ref of digits only is an id first: a file named `42` (no extension) is found by name only
    when no task 42 is visible to the caller."""
    task = await visible_task(session, int(ref), caller) if _is_task_id(ref) else None
    if task is None:
        named = await tasks.newest_named(session, ref, owner=caller)
        if named is not None:
            return RedirectResponse(result_url(named.id), status_code=303)
        # A browser gets a page it can show; an API client the body `/status` answers.
        if wants_html(request):
            return templates.TemplateResponse(
                request, "not_found.html", {"message": TASK_NOT_FOUND}, status_code=404
            )
        return JSONResponse({"detail": TASK_NOT_FOUND}, status_code=404)
    return _result(request, task, services)


def _result(request: Request, task: ImageTask, services: ServicesDep) -> HTMLResponse:
    # Rendered from the very body /status answers, so the page and its script read the same fields.
    status = task_status(task).model_dump(mode="json")
    final = task.status in FINAL_STATUSES
    return templates.TemplateResponse(
        request,
        "result.html",
        {
            "status": status,
            "original_url": original_url(task.id),
            "original_shown": task.content_type not in _NOT_SHOWN_BY_BROWSERS,
            "original_facts": image_facts(task.width, task.height, task.size_bytes),
            "original_not_shown": ORIGINAL_NOT_SHOWN,
            "output_facts": output_facts(status),
            "requested": [
                {
                    "name": item["name"],
                    "what": f"preset {item['preset']}"
                    if item["preset"]
                    else ", ".join(op["op"] for op in item["ops"]),
                }
                for item in status.get("processing") or []
            ],
            "all_outputs": [
                {
                    "name": output["name"],
                    "url": output["url"],
                    "facts": image_facts(output["width"], output["height"], output["size_bytes"]),
                    "kind": output["content_type"].removeprefix("image/").upper(),
                }
                for output in status.get("outputs") or []
            ],
            "status_url": status_url(task.id),
            "events_url": f"/tasks/{task.id}/events",
            "refresh_seconds": None if final else REFRESH_SECONDS,
            # The task controls' forms (api/routes/controls.py; Reprocess: api/routes/reprocess.py).
            "final": final,
            # A failed run that made some outputs: they can be kept, and only the others made again.
            "partly_made": bool(task.partial_outputs and task.partial_outputs.get("made")),
            "presets": [
                {"name": name, "description": preset.description} for name, preset in services.presets.items()
            ],
        },
    )


@router.get("/gallery", response_class=HTMLResponse)
async def gallery(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_TASK_ID)] = None,
) -> HTMLResponse:
    found = await tasks.newest(session, limit=GALLERY_PAGE_SIZE, cursor=cursor, owner=caller)
    return templates.TemplateResponse(
        request,
        "gallery.html",
        {
            "page": "gallery",
            "items": [task_status(task) for task in found.tasks],
            "cursor": cursor,
            "next_cursor": found.next_cursor,
        },
    )
