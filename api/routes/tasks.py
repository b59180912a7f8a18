"""The REST resource: upload an image (creating a task), read a task's status, fetch its output."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from api.callback_urls import CallbackRefused, vet_callback_url
from api.deps import MAX_TASK_ID, CallerDep, KeyDep, ServicesDep, SessionDep, TaskDep
from api.form_fields import FieldMisspelt, ignored_fields
from api.key_limits import LIMIT_FIELDS, UPLOAD_ANSWERS, AdmissionDep, limit_headers
from api.openapi import IDEMPOTENCY_KEY_PATTERN, UPLOAD_BODY, error, errors, task_links
from api.schemas import (
    TaskPage,
    TaskStatusResponse,
    UploadResponse,
    processed_url,
    result_url,
    status_url,
    task_status,
)
from api.stored_files import image_cache_control, stored_file_response
from api.templating import wants_html
from api.uploads import (
    STORAGE_FAILED,
    TOO_LARGE,
    ReceivedUpload,
    UploadRefused,
    receive_upload,
    refuse_unread,
)
from core import tasks
from core.api_keys import KeyPolicy
from core.formats import CONTENT_TYPES, EXTENSIONS, UNSUPPORTED_MESSAGE
from core.models import DEFAULT_PRIORITY, ImageTask, Priority, TaskStatus
from core.processing.cost import cost_refusal, output_frames
from core.processing.forms import resolve
from core.processing.operations import ProcessingInvalid
from core.processing.outputs import Processing
from core.storage import (
    STORAGE_UNAVAILABLE,
    Area,
    StorageUnavailable,
    is_stored_name,
    new_stored_name,
    remove_quietly,
)

router = APIRouter(tags=["tasks"])

UPLOAD_ACCEPTED = "Upload accepted; the image is queued for processing."
UPLOAD_REPLAYED = "This Idempotency-Key was already used for this file; here is the task it created."
BAD_IDEMPOTENCY_KEY = "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces."
IDEMPOTENCY_KEY_REUSED = "This Idempotency-Key was already used for a different file or processing."
# Besides `file`: how to process it (core.processing), and where to report the end (callbacks).
# Others are ignored and named in the answer, unless one looks like a misspelling (api.form_fields).
PROCESSING_FIELDS = ("preset", "ops", "outputs", "focus")
FORM_FIELDS = ("file", *PROCESSING_FIELDS, "callback_url", "priority")
BAD_PRIORITY = "`priority` must be one of: interactive, normal, bulk."
CALLBACKS_OFF = "This server sends no callbacks (its WEBHOOK_SECRET setting is empty)."

PROCESSED_NOT_FOUND = "Processed image not found"

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_READ_ERRORS = errors(401, 404, 503)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_MEDIA_TYPES = {EXTENSIONS[fmt]: CONTENT_TYPES[fmt] for fmt in EXTENSIONS}
_BINARY = {"type": "string", "format": "binary"}
_PROCESSED_NAME = Path(max_length=255, examples=["0f8e1c2a9b7d4e6f8a1b2c3d4e5f6a7b.jpg"])


async def _stored_key(request: Request, raw: str | None, caller: str | None) -> str | None:
    """The Idempotency-Key as stored: scoped to the caller's API key, so keys cannot collide."""
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(raw):
        # As an upload refusal, after reading some of the body: refused with the body unread, the
        # connection's close could reset the client's still-sending socket and lose the 400.
        await refuse_unread(request, 400, BAD_IDEMPOTENCY_KEY)
    return raw if caller is None else f"{caller}:{raw}"


async def _requested_callback(services: ServicesDep, upload: ReceivedUpload) -> str | None:
    url = upload.text_fields.get("callback_url")
    if not url:
        return None
    settings = services.settings
    if not settings.webhook_secret:
        raise HTTPException(status_code=422, detail=CALLBACKS_OFF)
    try:
        await vet_callback_url(url, allow_private=settings.webhook_allow_private)
    except CallbackRefused as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return url


async def _task_for_key(
    services: ServicesDep, key: str, upload: ReceivedUpload, processing: Processing, callback_url: str | None
) -> ImageTask | None:
    async with services.sessions() as session:
        existing = await tasks.find_by_idempotency_key(session, key)
    if existing is not None and (
        existing.sha256 != upload.sha256
        or existing.processing != processing.to_json()
        or existing.callback_url != callback_url
    ):
        raise HTTPException(status_code=422, detail=IDEMPOTENCY_KEY_REUSED)
    return existing


def _ignored_fields(upload: ReceivedUpload) -> list[str]:
    """The form's fields that are not ours (a submit button, a CSRF token); 422 for a misspelt one."""
    try:
        return ignored_fields(upload.text_fields, FORM_FIELDS)
    except FieldMisspelt as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def _requested_processing(services: ServicesDep, upload: ReceivedUpload) -> Processing:
    """The form's processing fields, validated and resolved; 422 naming the field otherwise."""
    fields = upload.text_fields
    settings = services.settings
    try:
        processing = resolve(
            preset=fields.get("preset"),
            ops=fields.get("ops"),
            outputs=fields.get("outputs"),
            presets=services.presets,
            watermark_text=settings.watermark_text,
            focus=fields.get("focus"),
            watermark_images=settings.watermark_images,
        )
    except ProcessingInvalid as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    for output in processing.outputs:
        info = upload.info
        frames = output_frames(output, info.format, info.frames)
        refused = cost_refusal(output, info.width, info.height, frames, limit=settings.max_output_pixels)
        if refused:
            field = f"outputs.{output.name}" if "outputs" in fields else "preset" if output.preset else "ops"
            raise HTTPException(status_code=422, detail=f"`{field}`: {refused}")
    return processing


def _requested_priority(upload: ReceivedUpload, policy: KeyPolicy | None) -> Priority:
    """The form's `priority`, else the key's default (its API_KEYS entry's `priority`); 422 for a
    value that is not one."""
    raw = upload.text_fields.get("priority")
    if not raw:
        return DEFAULT_PRIORITY if policy is None else Priority(policy.priority)
    try:
        return Priority(raw)
    except ValueError:
        raise HTTPException(status_code=422, detail=BAD_PRIORITY) from None


async def _create_task(
    services: ServicesDep,
    upload: ReceivedUpload,
    processing: Processing,
    callback_url: str | None,
    key: str | None,
    owner: str | None,
    priority: Priority,
) -> int:
    """Keep the upload's file, then insert its row; the new task's id."""
    input_name = new_stored_name(upload.info.extension)
    storage = services.storage
    try:
        await storage.keep_upload(upload.temp_path, input_name)
    except OSError as exc:
        raise UploadRefused(503, STORAGE_FAILED) from exc
    except StorageUnavailable as exc:
        raise UploadRefused(503, STORAGE_UNAVAILABLE) from exc
    # The row in one autocommit round trip on the driver pool (core.tasks): the ORM's flush and
    # commit cost about 1.2 ms of the API's CPU per upload, a quarter of all it spends on one.
    new_task = tasks.NewTask(
        filename=upload.display_name,
        content_type=upload.info.content_type,
        size_bytes=upload.size_bytes,
        width=upload.info.width,
        height=upload.info.height,
        sha256=upload.sha256,
        input_name=input_name,
        idempotency_key=key,
        owner=owner,
        callback_url=callback_url,
        processing=processing.to_json(),
        priority=priority,
    )
    return await tasks.insert_task(services.driver_pool, storage, new_task)


def _answer(
    request: Request,
    task_id: int,
    filename: str,
    message: str,
    *,
    replayed: bool,
    ignored: list[str],
    limits: dict[str, str],
) -> Response:
    if wants_html(request):
        # Without the key's limits: the draft warns that a client may hold back a redirect it is
        # told it has no quota left for, and the result page is not an upload.
        return RedirectResponse(result_url(task_id), status_code=303)
    body = UploadResponse(
        task_id=task_id,
        filename=filename,
        message=message,
        status_url=status_url(task_id),
        result_url=result_url(task_id),
        ignored_fields=ignored,
    )
    headers = {**limits, "Idempotent-Replayed": "true"} if replayed else limits
    return JSONResponse(body.model_dump(), headers=headers)


@router.post(
    "/upload",
    response_model=UploadResponse,
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {
            "description": "The task, new or (with a reused Idempotency-Key) the one the first upload made.",
            "headers": {
                "Idempotent-Replayed": {
                    "description": "Present, `true`, when the answer is the task an earlier upload with "
                    "this Idempotency-Key created.",
                    "schema": {"type": "string", "enum": ["true"]},
                },
                **LIMIT_FIELDS,
            },
            "links": task_links("$response.body#/task_id"),
        },
        303: {
            "description": "Browser form posts (Accept: text/html) are sent to the task's result page.",
            "headers": {
                "Location": {
                    "description": "The result page, `/result/{task_id}`.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^/result/[1-9][0-9]*$"},
                }
            },
        },
        400: error("The file is empty, or Idempotency-Key is malformed.", BAD_IDEMPOTENCY_KEY, html=True),
        401: errors(401)[401],
        **UPLOAD_ANSWERS,
        413: error(
            "The upload, or one of its text fields, is over its limit.",
            TOO_LARGE.format(limit=10_000_000),
            html=True,
        ),
        415: error(
            "The file is not a JPEG, PNG, GIF, WebP, BMP, AVIF, HEIC or TIFF image.",
            UNSUPPORTED_MESSAGE,
            html=True,
        ),
        422: error(
            "A bad form or processing field (named in the message), too many pixels or frames, or an "
            "Idempotency-Key reused for a different upload.",
            IDEMPOTENCY_KEY_REUSED,
            html=True,
        ),
        503: {
            **errors(503)[503],
            "description": "PostgreSQL or the file store cannot be reached; nothing was stored. The same "
            "request may succeed after `Retry-After` seconds.",
        },
    },
)
async def upload(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    key_policy: KeyDep,
    admission: AdmissionDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes a retried upload safe: the same key with the same file and processing "
            "answers the task the first upload created. 1 to 200 printable ASCII characters, no spaces.",
            # Checked by _stored_key (400 with a message that says the rule), not by FastAPI (422).
            json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN, "minLength": 1, "maxLength": 200},
            examples=["3f1c6a52-5f1e-4c1b-9d8e-1b2a7c4e9f00"],
        ),
    ] = None,
) -> Response:
    """Upload an image (multipart field `file`) and queue it for processing.

    `priority` (`interactive`, `normal`, the default, or `bulk`) decides which waiting task is
    processed first; between API keys, waiting tasks take turns.

    Optional fields choose the processing (one of them): `preset` (a name from `GET /presets`),
    `ops` (a JSON list of operations) or `outputs` (a JSON object of output name -> preset name or
    ops list, for several derivatives of one upload). Without any, the `default` preset. `focus`
    (x,y fractions of the picture as displayed) is the point `gravity: "focus"` keeps.

    With an `Idempotency-Key` header, a retried upload of the same file returns the task the first
    one created instead of a new one.

    Other text fields (a submit button, a CSRF token) are ignored and named in `ignored_fields`;
    one that looks like a misspelt field of ours (`presets`, `op`) is refused with 422.
    """
    key = await _stored_key(request, idempotency_key, caller)
    settings = services.settings
    received = await receive_upload(
        request,
        folders=services.storage.folders,
        max_file_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_frames=settings.max_frames,
    )
    try:
        ignored = _ignored_fields(received)
        processing = _requested_processing(services, received)
        callback_url = await _requested_callback(services, received)
        priority = _requested_priority(received, key_policy)
        # A session only for a keyed upload: the rest runs on the driver pool (see _create_task).
        existing = await _task_for_key(services, key, received, processing, callback_url) if key else None
        if existing is None:
            try:
                task_id = await _create_task(
                    services, received, processing, callback_url, key, caller, priority
                )
            except tasks.TaskConflict:
                # A concurrent request with the same key committed first.
                existing = (
                    await _task_for_key(services, key, received, processing, callback_url) if key else None
                )
                if existing is None:
                    raise
    finally:
        remove_quietly(received.temp_path)
    limits = limit_headers(admission)
    if existing is not None:
        return _answer(
            request,
            existing.id,
            existing.filename,
            UPLOAD_REPLAYED,
            replayed=True,
            ignored=ignored,
            limits=limits,
        )
    await services.dispatcher.dispatch_committed()
    return _answer(
        request,
        task_id,
        received.display_name,
        UPLOAD_ACCEPTED,
        replayed=False,
        ignored=ignored,
        limits=limits,
    )


@router.get(
    "/status/{task_id}",
    response_model=TaskStatusResponse,
    responses=_READ_ERRORS,
)
async def get_status(task: TaskDep) -> TaskStatusResponse:
    """A task's state: `pending`, `processing`, `done` (with `processed_url`) or `failed` (with `error`)."""
    return task_status(task)


@router.get("/tasks/{task_id}", response_model=TaskStatusResponse, responses=_READ_ERRORS)
async def get_task(task: TaskDep) -> TaskStatusResponse:
    """The same body as `GET /status/{task_id}`, under the task resource."""
    return task_status(task)


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    responses={204: {"description": "The task and its files are gone."}, **_READ_ERRORS},
)
async def delete_task(task: TaskDep, session: SessionDep, services: ServicesDep) -> Response:
    """Remove a task and its files. A worker processing it at that moment drops its result when it
    next looks (its message is then terminated, its output removed)."""
    await tasks.delete_task(session, services.storage, task.id)
    return Response(status_code=204)


@router.get(
    "/tasks",
    response_model=TaskPage,
    responses=errors(401, 503),
)
async def list_tasks(
    session: SessionDep,
    caller: CallerDep,
    status: TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, examples=[DEFAULT_PAGE_SIZE])] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        int | None,
        Query(ge=1, le=MAX_TASK_ID, description="`next_cursor` of the page before.", examples=[41]),
    ] = None,
) -> TaskPage:
    """Tasks, newest first, optionally of one status; pages of at most 100 (keyset pagination,
    so pages stay consistent while new tasks arrive). With API keys on, only the caller's tasks."""
    found = await tasks.newest(session, limit=limit, cursor=cursor, status=status, owner=caller)
    return TaskPage(items=[task_status(task) for task in found.tasks], next_cursor=found.next_cursor)


@router.get(
    "/processed/{name}",
    response_class=FileResponse,
    responses={
        200: {
            "content": {mt: {"schema": _BINARY} for mt in _MEDIA_TYPES.values()},
            "description": "The processed image.",
        },
        303: {
            "description": "`name` is an uploaded file's name (the original design's URLs): the newest "
            "such task's processed image, at its generated name.",
            "headers": {
                "Location": {
                    "description": "The processed image.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        },
        **errors(401, 503),
        404: error("No such processed image (or another API key's).", PROCESSED_NOT_FOUND),
    },
)
async def get_processed(
    name: Annotated[str, _PROCESSED_NAME], services: ServicesDep, session: SessionDep, caller: CallerDep
) -> Response:
    """A processed image, by the generated name given in `processed_url`; or, by the name a file was
    uploaded under (the original design served `/processed/<that name>`), a 303 to the processed
    image of the newest task of that name (404 until it is done)."""
    if not is_stored_name(name):
        named = await tasks.newest_named(session, name, owner=caller)
        location = None if named is None else processed_url(named)
        if location is None:
            raise HTTPException(status_code=404, detail=PROCESSED_NOT_FOUND)
        return RedirectResponse(location, status_code=303)
    if caller is not None and not await tasks.owns_output(session, caller, name):
        raise HTTPException(status_code=404, detail=PROCESSED_NOT_FOUND)
    found = await services.storage.find(Area.PROCESSED, name)
    if found is None:
        raise HTTPException(status_code=404, detail=PROCESSED_NOT_FOUND)
    return stored_file_response(
        found,
        media_type=_MEDIA_TYPES.get(PurePath(name).suffix, "application/octet-stream"),
        # Not `immutable`: a re-run after a crash rewrites the file (with the same picture).
        cache_control=image_cache_control(caller, max_age=86400),
    )
