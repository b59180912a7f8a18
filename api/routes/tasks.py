"""The REST resource: upload an image (creating a task), read a task's status, fetch its output."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import WithJsonSchema

from api.deps import MAX_TASK_ID, CallerDep, KeyDep, ServicesDep, SessionDep, TaskDep
from api.intake import (
    BAD_IDEMPOTENCY_KEY,
    CALLBACKS_OFF,
    IDEMPOTENCY_KEY_REUSED,
    PROCESSING_FIELDS,
    Intake,
    make_task,
    queue_made,
    scoped_key,
    well_formed_key,
)
from api.key_limits import LIMIT_FIELDS, UPLOAD_ANSWERS, admit_upload, limit_headers
from api.openapi import (
    IDEMPOTENCY_KEY_PATTERN,
    STORED_FILE_ANSWERS,
    UPLOAD_BODY,
    error,
    errors,
    sentence_or_list_422,
    task_links,
)
from api.schemas import (
    TaskPage,
    TaskStatusResponse,
    UploadResponse,
    processed_url,
    result_url,
    status_url,
    task_status,
)
from api.stored_files import image_cache_control, stored_file_answer
from api.templating import wants_html
from api.uploads import TOO_LARGE, UploadRefused, UrlFetcher, receive_upload, upload_boundary
from api.url_import import REMOTE_STATUS, REMOTE_TIMEOUT, UrlImportPolicy, fetch_image
from core import tasks
from core.formats import CONTENT_TYPES, EXTENSIONS, UNSUPPORTED_MESSAGE
from core.models import TaskStatus
from core.storage import Area, is_stored_name

# Re-exported: the tests and the documentation name them from here, where `/upload` answers them.
__all__ = ["BAD_IDEMPOTENCY_KEY", "CALLBACKS_OFF", "IDEMPOTENCY_KEY_REUSED", "router"]

router = APIRouter(tags=["tasks"])

UPLOAD_ACCEPTED = "Upload accepted; the image is queued for processing."
UPLOAD_REPLAYED = "This Idempotency-Key was already used for this file; here is the task it created."
# Besides `file`: the processing fields and the callback URL (api.intake). Others are ignored and
# named in the answer, unless one looks like a misspelling (api.form_fields).
FORM_FIELDS = ("file", *PROCESSING_FIELDS, "callback_url")
# With URL_IMPORT on, `url` is ours too (instead of `file`); off, it is any other form field.
IMPORT_FORM_FIELDS = (*FORM_FIELDS, "url")

PROCESSED_NOT_FOUND = "Processed image not found"
_STATUSES = [status.value for status in TaskStatus]
BAD_STATUS_FILTER = f"`status` must be one of: {', '.join(_STATUSES)}."

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_READ_ERRORS = errors(401, 404, 503)
_MEDIA_TYPES = {EXTENSIONS[fmt]: CONTENT_TYPES[fmt] for fmt in EXTENSIONS}
_BINARY = {"type": "string", "format": "binary"}
# `status` is checked by the route (422 with a sentence, as every field we check), not by FastAPI
# (a list); the document still names the values it takes.
_STATUS_FILTER = Query(description="Only tasks of this status.")
_STATUS_SCHEMA = WithJsonSchema({"type": "string", "enum": _STATUSES})
_PROCESSED_NAME = Path(max_length=255, examples=["0f8e1c2a9b7d4e6f8a1b2c3d4e5f6a7b.jpg"])


def _stored_key(raw: str | None, caller: str | None) -> str | None:
    """The Idempotency-Key as stored: scoped to the caller's API key, so keys cannot collide."""
    if raw is None:
        return None
    if not well_formed_key(raw):
        # Answered with the body unread, as every upload refusal is: the HTTP layer's lingering
        # close lets the client read it (api.http_limits).
        raise UploadRefused(400, BAD_IDEMPOTENCY_KEY)
    return scoped_key(raw, caller)


def _url_fetcher(services: ServicesDep) -> UrlFetcher | None:
    """How this server fetches an upload's `url` (api/url_import.py); None when URL_IMPORT is off."""
    settings = services.settings
    if not settings.url_import:
        return None
    policy = UrlImportPolicy(
        allow_private=settings.url_import_allow_private,
        max_bytes=settings.max_upload_bytes,
        timeout_seconds=settings.url_import_timeout_seconds,
    )
    return functools.partial(fetch_image, policy=policy)


def answer(request: Request, made: Intake, limits: Mapping[str, str] | None = None) -> Response:
    """`/upload`'s answer for its task (every ingest path that answers as `/upload` does): JSON with
    the key's limit fields, or for a browser form post a redirect to its page."""
    task_id = made.task_id
    if wants_html(request):
        # Without the key's limits: the draft warns that a client may hold back a redirect it is
        # told it has no quota left for, and the result page is not an upload.
        return RedirectResponse(result_url(task_id), status_code=303)
    body = UploadResponse(
        task_id=task_id,
        filename=made.filename,
        message=made.message or (UPLOAD_REPLAYED if made.replayed else UPLOAD_ACCEPTED),
        status_url=status_url(task_id),
        result_url=result_url(task_id),
        ignored_fields=made.ignored,
    )
    limits = dict(limits or {})
    headers = {**limits, "Idempotent-Replayed": "true"} if made.replayed else limits
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
        502: error(
            "Import by URL: the remote server failed or answered an error.",
            REMOTE_STATUS.format(status=404),
            html=True,
        ),
        503: {
            **errors(503)[503],
            "description": "PostgreSQL or the file store cannot be reached; nothing was stored. The same "
            "request may succeed after `Retry-After` seconds.",
        },
        504: error(
            "Import by URL: the fetch took longer than URL_IMPORT_TIMEOUT_SECONDS.",
            REMOTE_TIMEOUT.format(seconds=30),
            html=True,
        ),
    },
)
async def upload(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    key_policy: KeyDep,
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

    With URL_IMPORT on, a `url` field instead of `file` makes the server fetch the image from that
    public http(s) URL (at most 5 redirects, MAX_UPLOAD_BYTES, URL_IMPORT_TIMEOUT_SECONDS) and treat
    its bytes as an upload; a URL that cannot be fetched is refused at once (422 refused URL, 502
    the remote server failed, 504 too slow). Off, a `url` field is refused with 422.

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
    key = _stored_key(idempotency_key, caller)
    settings = services.settings
    boundary = upload_boundary(request, settings.max_upload_bytes)
    # Counted once the headers are known good (a malformed Idempotency-Key, a declared length over
    # the limit or a body that is not multipart cost no quota), and before a byte of the body is
    # read (a key over its limit costs one statement, not an upload). A replay is not counted.
    admission = await admit_upload(services, key_policy, idempotency_key=key)
    received = await receive_upload(
        request,
        boundary,
        folders=services.storage.folders,
        max_file_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_frames=settings.max_frames,
        fetch_url=_url_fetcher(services),
    )
    known = IMPORT_FORM_FIELDS if settings.url_import else FORM_FIELDS
    # Not counted above as a replay, it is counted if it makes a task after all.
    count_if_new = admission is None and key is not None
    made = await make_task(
        services, received, known=known, key=key, owner=caller, policy=key_policy, count_if_new=count_if_new
    )
    await queue_made(services, made)
    return answer(request, made, limit_headers(admission))


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
    responses={
        422: sentence_or_list_422(
            "`status` is not a task status (the sentence names those it takes); or `limit` or `cursor` "
            "out of range."
        ),
        **errors(401, 503),
    },
)
async def list_tasks(
    session: SessionDep,
    caller: CallerDep,
    status: Annotated[str | None, _STATUS_SCHEMA, _STATUS_FILTER] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, examples=[DEFAULT_PAGE_SIZE])] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        int | None,
        Query(ge=1, le=MAX_TASK_ID, description="`next_cursor` of the page before.", examples=[41]),
    ] = None,
) -> TaskPage:
    """Tasks, newest first, optionally of one status; pages of at most 100 (keyset pagination,
    so pages stay consistent while new tasks arrive). With API keys on, only the caller's tasks."""
    if status is not None and status not in _STATUSES:
        raise HTTPException(status_code=422, detail=BAD_STATUS_FILTER)
    wanted = None if status is None else TaskStatus(status)
    found = await tasks.newest(session, limit=limit, cursor=cursor, status=wanted, owner=caller)
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
        **STORED_FILE_ANSWERS,
        **errors(401, 503),
        404: error("No such processed image (or another API key's).", PROCESSED_NOT_FOUND),
    },
)
async def get_processed(
    name: Annotated[str, _PROCESSED_NAME],
    services: ServicesDep,
    session: SessionDep,
    caller: CallerDep,
    request: Request,
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
    return await stored_file_answer(
        services.storage,
        services.settings,
        Area.PROCESSED,
        name,
        found,
        request=request,
        media_type=_MEDIA_TYPES.get(PurePath(name).suffix, "application/octet-stream"),
        # Not `immutable`: a re-run after a crash rewrites the file (with the same picture).
        cache_control=image_cache_control(caller, max_age=86400),
    )
