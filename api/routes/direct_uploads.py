"""Direct-to-storage uploads (s3 backend): the client sends the file straight to the bucket.

`POST /uploads` declares the upload (name, size, type, processing) and answers a presigned POST
for a key we generate, good for DIRECT_UPLOAD_EXPIRES_SECONDS and for at most the declared size
(and MAX_UPLOAD_BYTES). The client POSTs the file to the bucket, then `POST /uploads/{id}/complete`:
the object's size is checked, its first bytes sniffed with a ranged GET (a file that is no image
is refused without reading the rest), then it is read once, streamed into a temporary file, to be
identified by the same probe as an upload (every limit, the same 4xx) and hashed (the task's
sha256); the task is made from the object where it lies and queued exactly as `/upload` would.
A refused object is deleted. The row is locked while this runs, so completing twice, even at
once, gives one task; a later completion answers the same task (or the same refusal).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import CallerDep, KeyDep, ServicesDep
from api.intake import (
    Intake,
    make_task,
    queue_made,
    requested_callback,
    requested_priority,
    resolved_processing,
)
from api.key_limits import admit_upload, limit_headers
from api.openapi import error, errors
from api.routes.tasks import FORM_FIELDS, answer
from api.schemas import DirectUploadRequest, DirectUploadResponse, UploadResponse
from api.uploads import EMPTY_FILE, STORAGE_FAILED, TOO_LARGE, ReceivedUpload, UploadRefused, display_name
from core import direct_uploads, tasks
from core.api_keys import policy_of
from core.formats import (
    CONTENT_TYPES,
    EXTENSIONS,
    SIGNATURE_BYTES,
    UNSUPPORTED_MESSAGE,
    ImageInfo,
    ImageRejected,
    UnsupportedImage,
    has_image_signature,
    probe_image,
)
from core.models import DirectUpload
from core.storage import Area, StoredObject, new_stored_name, remove_quietly
from core.storage.s3 import S3Storage

router = APIRouter(tags=["direct uploads"])

# Completions at once in one API process: each holds a pooled connection (its row's lock) while it
# copies the object (up to MAX_UPLOAD_BYTES) and makes the task, so they queue here rather than for
# the pool, whose connections the dispatcher and every other request need too.
MAX_COMPLETING = 4
_completing = asyncio.Semaphore(MAX_COMPLETING)  # binds to the running loop on first use

# A declaration is a few small fields; a bigger body is not one.
MAX_DECLARATION_BYTES = 64 * 1024
DECLARATION_TOO_LARGE = f"The declaration is over {MAX_DECLARATION_BYTES:,} bytes."
NOT_A_DECLARATION = (
    "Send a JSON object: {{filename, size, content_type}} and the processing fields. {problem}"
)
# Declared uploads not yet completed, per API key (or for everyone, with keys off): each is a row
# until it is completed or swept, so a client cannot make them without end.
MAX_OPEN_UPLOADS = 1000
TOO_MANY_OPEN = (
    f"{MAX_OPEN_UPLOADS:,} declared uploads are waiting to be completed; complete some (or let "
    "them expire) before declaring more."
)
NEEDS_S3 = (
    "Direct uploads need the s3 storage backend (STORAGE_BACKEND=s3); send the file to POST /upload instead."
)
UNKNOWN_UPLOAD = "No such upload (it may have expired)."
NOT_UPLOADED = "Nothing has been uploaded for this upload yet: POST the file to its url first."
EXPIRED = "This upload expired before it was completed; declare a new one."
COMPLETED_BEFORE = "This upload was completed before; here is the task it created."
# A type we do not know is stored as bytes; the server identifies the file from them anyway.
_FALLBACK_TYPE = "application/octet-stream"
_KNOWN_TYPES = {content_type: EXTENSIONS[fmt] for fmt, content_type in CONTENT_TYPES.items()}
# Checked by complete_upload (404 for a malformed id, as for an unknown one), not by FastAPI: its
# 422 would be a list, where every answer of these routes has a sentence as its detail.
_UPLOAD_ID = PathParam(examples=["4c1d0e6f9a8b7c6d5e4f3a2b1c0d9e8f"])
_UPLOAD_ID_FORMAT = re.compile("[0-9a-f]{32}")
_RETRY_AFTER = {"description": "Seconds to wait.", "required": True, "schema": {"type": "string"}}
_DECLARATION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        # By reference, like every JSON body (api.openapi.BODY_MODELS): inlined, its `$defs`
        # (Priority) were left behind and the `#/$defs/...` references resolved to nothing.
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DirectUploadRequest"}}},
    }
}


def _s3(services: ServicesDep) -> S3Storage:
    storage = services.storage
    if not isinstance(storage, S3Storage):
        # 403, not 501: the server works, this one is set up without the feature (as URL_IMPORT).
        raise HTTPException(status_code=403, detail=NEEDS_S3)
    return storage


async def _declaration(request: Request) -> DirectUploadRequest:
    """The body, read within MAX_DECLARATION_BYTES and validated; a 413 or a 422 in words."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_DECLARATION_BYTES:
            raise UploadRefused(413, DECLARATION_TOO_LARGE)
    try:
        return DirectUploadRequest.model_validate_json(bytes(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        problem = f"`{where}`: {first['msg']}." if where else f"{first['msg']}."
        raise HTTPException(status_code=422, detail=NOT_A_DECLARATION.format(problem=problem)) from None


def _text_fields(body: DirectUploadRequest) -> dict[str, str]:
    """The processing fields as the form would send them (JSON values as JSON text)."""
    fields: dict[str, str] = {}
    for name in ("preset", "ops", "outputs", "focus", "callback_url", "priority"):
        value: Any = getattr(body, name)
        if value is not None:
            fields[name] = value if isinstance(value, str) else json.dumps(value)
    return fields


@router.post(
    "/uploads",
    response_model=DirectUploadResponse,
    status_code=201,
    openapi_extra=_DECLARATION_BODY,
    responses={
        401: errors(401)[401],
        413: error("The declared size is over MAX_UPLOAD_BYTES.", TOO_LARGE.format(limit=10_000_000)),
        429: error(
            f"{MAX_OPEN_UPLOADS} declared uploads of this caller wait to be completed.",
            TOO_MANY_OPEN,
            headers={"Retry-After": _RETRY_AFTER},
        ),
        422: error("A bad field (named in the message).", "`ops`: …"),
        403: error("The server does not store files in S3.", NEEDS_S3),
        503: errors(503)[503],
    },
)
async def declare_upload(
    request: Request, response: Response, services: ServicesDep, caller: CallerDep, key: KeyDep
) -> DirectUploadResponse:
    """Declare an upload to send straight to the bucket (s3 backend only).

    POST the file to `url` as multipart/form-data with every entry of `fields`, then the file as
    `file` (the bucket answers 204), before `expires_at`; then POST to `complete_url`. The
    processing fields are those of `/upload` (`ops` and `outputs` may also be JSON values)."""
    storage = _s3(services)
    body = await _declaration(request)
    settings = services.settings
    if body.size > settings.max_upload_bytes:
        raise HTTPException(status_code=413, detail=TOO_LARGE.format(limit=settings.max_upload_bytes))
    fields = _text_fields(body)
    # Checked now, so a bad field is refused before the file is sent; resolved again at completion.
    resolved_processing(services, fields)
    await requested_callback(services, fields)
    requested_priority(fields, key)
    async with services.sessions() as session:
        if await direct_uploads.count_open(session, caller) >= MAX_OPEN_UPLOADS:
            raise HTTPException(status_code=429, detail=TOO_MANY_OPEN, headers={"Retry-After": "60"})
    # Counted against the key's limits once, when declared (a 429 here costs the client nothing
    # sent), and only once the declaration could be refused for nothing else of its own.
    response.headers.update(limit_headers(await admit_upload(services, key)))
    content_type = body.content_type.lower() if body.content_type.lower() in _KNOWN_TYPES else _FALLBACK_TYPE
    object_name = new_stored_name(_KNOWN_TYPES.get(content_type, ".bin"))
    expires_in = settings.direct_upload_expires_seconds
    url, form = await storage.presigned_post(
        Area.UPLOADS,
        object_name,
        max_bytes=body.size,
        content_type=content_type,
        expires_seconds=expires_in,
    )
    upload_id = uuid.uuid4().hex
    expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
    row = DirectUpload(
        id=upload_id,
        owner=caller,
        object_name=object_name,
        filename=display_name(body.filename),
        size_bytes=body.size,
        content_type=content_type,
        fields=fields,
        expires_at=expires_at,
    )
    async with services.sessions() as session, session.begin():
        await direct_uploads.declare(session, row)
    return DirectUploadResponse(
        upload_id=upload_id,
        url=url,
        fields=form,
        complete_url=f"/uploads/{upload_id}/complete",
        expires_at=expires_at,
    )


@router.post(
    "/uploads/{upload_id}/complete",
    response_model=UploadResponse,
    responses={
        200: {"description": "The task, as `/upload` answers it (also when completed before)."},
        401: errors(401)[401],
        404: error("No such upload for this caller (or it was swept).", UNKNOWN_UPLOAD),
        409: error("The file has not been uploaded to the bucket yet.", NOT_UPLOADED),
        410: error("The upload expired before it was completed.", EXPIRED),
        413: error("The object is larger than declared or than MAX_UPLOAD_BYTES.", TOO_LARGE.format(limit=1)),
        415: error("Not an accepted image (the object is deleted).", UNSUPPORTED_MESSAGE),
        422: error("Too many pixels or frames, or a processing field (the object is deleted).", "…"),
        403: error("The server does not store files in S3.", NEEDS_S3),
        503: errors(503)[503],
    },
)
async def complete_upload(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    upload_id: Annotated[str, _UPLOAD_ID],
) -> Response:
    """Check the uploaded object and queue its task, exactly as `/upload` would; or refuse it with
    `/upload`'s answer for that file, and delete it."""
    storage = _s3(services)
    if not _UPLOAD_ID_FORMAT.fullmatch(upload_id):
        raise HTTPException(status_code=404, detail=UNKNOWN_UPLOAD)
    async with _completing, services.sessions() as session, session.begin():
        row = await direct_uploads.lock(session, upload_id, caller)
        if row is None:
            raise HTTPException(status_code=404, detail=UNKNOWN_UPLOAD)
        if row.task_id is not None:
            return answer(request, await _earlier_task(session, row.task_id, row.filename))
        if row.refusal_status is not None:
            raise HTTPException(status_code=row.refusal_status, detail=row.refusal)
        # A completion retried after its task was made but before it was recorded here.
        made = await tasks.find_by_input_name(session, row.object_name)
        if made is not None:
            await direct_uploads.record_task(session, row.id, made.id)
            return answer(request, await _earlier_task(session, made.id, row.filename))
        lost_after = timedelta(seconds=services.settings.lost_after_seconds)
        if datetime.now(UTC) > row.expires_at + lost_after:
            raise HTTPException(status_code=410, detail=EXPIRED)
        try:
            queued = await _check_and_queue(services, storage, row, caller)
        except (UploadRefused, HTTPException) as exc:
            status, message = _refusal(exc)
            if status in (409, 503):  # not uploaded yet, or a passing fault: may be completed later
                raise
            await storage.remove(Area.UPLOADS, [row.object_name])
            await direct_uploads.record_refusal(session, row.id, status, message)
            refused: UploadRefused | HTTPException | None = exc
        else:
            await direct_uploads.record_task(session, row.id, queued.task_id)
            refused = None
    if refused is not None:
        raise refused  # after the transaction: the refusal is recorded
    await queue_made(services, queued)  # with the row's lock and session let go
    return answer(request, queued)


async def _earlier_task(session: AsyncSession, task_id: int, filename: str) -> Intake:
    task = await tasks.get(session, task_id)
    name = task.filename if task else filename
    return Intake(task_id, name, replayed=True, ignored=[], message=COMPLETED_BEFORE)


def _refusal(exc: UploadRefused | HTTPException) -> tuple[int, str]:
    if isinstance(exc, UploadRefused):
        return exc.status_code, exc.message
    return exc.status_code, str(exc.detail)


async def _check_and_queue(
    services: ServicesDep, storage: S3Storage, row: DirectUpload, caller: str | None
) -> Intake:
    settings = services.settings
    limit = min(row.size_bytes, settings.max_upload_bytes)
    size = await storage.object_size(Area.UPLOADS, row.object_name)
    if size is None:
        raise HTTPException(status_code=409, detail=NOT_UPLOADED)
    if size == 0:
        raise UploadRefused(400, EMPTY_FILE)
    if size > limit:  # the POST policy forbids it; a store that ignored it is still held to it
        raise UploadRefused(413, TOO_LARGE.format(limit=limit))
    head = await storage.read_range(Area.UPLOADS, row.object_name, 0, SIGNATURE_BYTES)
    if not has_image_signature(head):
        raise UploadRefused(415, UNSUPPORTED_MESSAGE)
    temp_path = storage.folders.temp_upload_path()
    try:
        sha256 = await _copy_object(storage, row.object_name, temp_path, limit)
        info = await _identify(temp_path, settings.max_image_pixels, settings.max_frames)
        received = ReceivedUpload(
            temp_path=temp_path,
            display_name=row.filename,
            size_bytes=size,
            sha256=sha256,
            info=info,
            text_fields=dict(row.fields),
        )
        return await make_task(
            services,
            received,
            known=FORM_FIELDS,
            key=None,
            owner=caller,
            stored_name=row.object_name,
            policy=policy_of(services.settings.api_keys, caller),
        )
    finally:
        remove_quietly(temp_path)


async def _copy_object(storage: S3Storage, name: str, temp_path: Path, limit: int) -> str:
    """Stream the object into `temp_path` (never more than `limit` bytes); its sha256."""
    found = await storage.find(Area.UPLOADS, name)
    if not isinstance(found, StoredObject):
        raise HTTPException(status_code=409, detail=NOT_UPLOADED)
    digest = hashlib.sha256()
    written = 0
    try:
        # Page-cache writes of one chunk at a time, as api.uploads does.
        with open(temp_path, "wb") as target:  # noqa: ASYNC230
            async for chunk in found.chunks:
                written += len(chunk)
                if written > limit:
                    raise UploadRefused(413, TOO_LARGE.format(limit=limit))
                digest.update(chunk)
                target.write(chunk)
    except OSError as exc:
        raise UploadRefused(503, STORAGE_FAILED) from exc
    return digest.hexdigest()


async def _identify(path: Path, max_pixels: int, max_frames: int) -> ImageInfo:
    """probe_image in a thread, its refusals as /upload answers them (api.uploads._receive)."""
    probe = functools.partial(probe_image, path, max_pixels=max_pixels, max_frames=max_frames)
    try:
        return await anyio.to_thread.run_sync(probe)
    except UnsupportedImage as exc:
        raise UploadRefused(415, str(exc)) from None
    except ImageRejected as exc:
        raise UploadRefused(422, str(exc)) from None
    except OSError as exc:
        raise UploadRefused(503, STORAGE_FAILED) from exc
