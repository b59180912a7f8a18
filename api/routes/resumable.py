"""Resumable uploads: the tus 1.0.0 protocol at `/files/` (headers: api/tus_protocol.py).

`POST /files/` creates an upload of a declared `Upload-Length` (at most MAX_UPLOAD_BYTES), its
`Upload-Metadata` carrying `filename` and the processing fields of `POST /upload` (checked now, so a
bad preset is refused before any byte is sent). `PATCH /files/{id}` appends bytes at
`Upload-Offset`; `HEAD` tells how many arrived; `DELETE` drops it. A client whose connection drops
asks HEAD and carries on from there, on any API replica: the state is a PostgreSQL row and the
bytes are stored objects (core/resumable.py), one per PATCH, in the storage backend. What a PATCH
received before its connection dropped is kept (without an `Upload-Checksum` to check it against).

The PATCH that completes the upload joins the pieces into one file and makes it a task exactly as
`POST /upload` does (api/intake.py): the same checks and refusals (that PATCH answers them, and the
upload is then gone), the Idempotency-Key given at creation honoured. Its answer, and HEAD after it,
carry the task id in `Imagequeue-Task-Id`.

Bounds: MAX_UPLOAD_BYTES per upload (413 at creation), the rest of the upload per PATCH (413),
MAX_PIECES pieces per upload, TUS_MAX_OPEN_UPLOADS unfinished uploads per API key (429), and
TUS_EXPIRY_SECONDS from creation, after which the upload answers 410 until the sweep deletes it
(then 404).

These routes are not in the OpenAPI document: tus is their contract, and tus clients speak it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from api.allowed_methods import allowed_methods
from api.deps import CallerDep, KeyDep, ServicesDep
from api.intake import (
    BAD_IDEMPOTENCY_KEY,
    PROCESSING_FIELDS,
    Intake,
    checked_fields,
    make_task,
    queue_made,
    requested_callback,
    requested_priority,
    resolved_processing,
    scoped_key,
    well_formed_key,
)
from api.key_limits import admit_upload, limit_headers
from api.state import Services
from api.tus_protocol import (
    OFFSET_CONTENT_TYPE,
    TASK_ID_HEADER,
    TUS_PATH,
    TUS_VERSION,
    TusRefused,
    byte_count,
    capabilities,
    check_version,
    http_date,
    parse_checksum,
    parse_metadata,
    tus_headers,
)
from api.uploads import (
    EMPTY_FILE,
    STORAGE_FAILED,
    TOO_LARGE,
    ReceivedUpload,
    UploadRefused,
    display_name,
    identify_file,
    storage_refusals,
)
from core import resumable
from core.api_keys import policy_of
from core.key_limits import Verdict
from core.models import ResumableUpload
from core.storage import Area, StorageUnavailable, remove_quietly, sync_path

log = logging.getLogger(__name__)

router = APIRouter(tags=["resumable uploads"], include_in_schema=False)

FILES = TUS_PATH
# Upload-Metadata keys of ours: the file's name and POST /upload's fields. Others (`filetype`,
# `relativePath` from browser clients) are ignored, unless one looks like ours misspelt (422).
METADATA_FIELDS = ("filename", *PROCESSING_FIELDS, "callback_url")
# Stored objects per upload: a PATCH each, a dropped connection costing one more. A client past it
# may still finish the upload in one PATCH.
MAX_PIECES = 1000
# Uploads being completed at once by one API process: each holds two pooled connections (its row's
# lock, and the Idempotency-Key lookup; the dispatcher is woken once both are let go) and joins up to
# MAX_UPLOAD_BYTES on disk, so they queue here rather than for the pool, whose 15 connections would
# then time out into 503s.
MAX_FINISHING = 4
_finishing = asyncio.Semaphore(MAX_FINISHING)  # binds to the running loop on first use

UPLOAD_NOT_FOUND = "No such upload (never created, finished long ago, deleted, or another API key's)."
UPLOAD_EXPIRED = "This upload expired before it was finished; start a new one."
OFFSET_MISMATCH = (
    "Upload-Offset is {sent}, but the upload has {received} bytes: ask HEAD and resume from there."
)
WRONG_CONTENT_TYPE = f"A PATCH body must be sent as Content-Type: {OFFSET_CONTENT_TYPE}."
BEYOND_LENGTH = "The PATCH goes beyond the upload's declared Upload-Length of {length:,} bytes."
TOO_MANY_PIECES = f"This upload already has {MAX_PIECES} pieces: send the rest in one PATCH."
TOO_MANY_OPEN = "{count} unfinished uploads already: finish or DELETE one first (at most {limit} at a time)."
DEFER_LENGTH = "Upload-Defer-Length is not supported: declare Upload-Length."
ALREADY_FINISHED = "This upload is complete; its task is named in the Imagequeue-Task-Id header."
CHECKSUM_MISMATCH = "The PATCH body does not match its Upload-Checksum; nothing of it was kept."
BAD_OVERRIDE = "X-HTTP-Method-Override must be PATCH, DELETE or HEAD here."

_TusVersion = Annotated[str | None, Header(alias="Tus-Resumable")]


def _refusal(exc: TusRefused | UploadRefused | HTTPException) -> JSONResponse:
    # An HTTPException's own headers stay (the key limits' Retry-After and RateLimit fields).
    if isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
        headers = {**(exc.headers or {}), **tus_headers()}
    elif isinstance(exc, TusRefused):
        status, message = exc.status_code, exc.message
        headers = {**exc.headers, **tus_headers()}
    else:
        status, message = exc.status_code, exc.message
        headers = tus_headers()
    if status == 412:
        headers["Tus-Version"] = TUS_VERSION
    if status == 503:  # nothing was stored; the same request will do once storage is back
        headers["Retry-After"] = "5"
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _answers_tus(
    handler: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Every refusal of a tus route as JSON with Tus-Resumable (and Tus-Version for 412)."""

    @functools.wraps(handler)
    async def answer(*args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(*args, **kwargs)
        except (TusRefused, UploadRefused, HTTPException) as exc:
            return _refusal(exc)

    return answer


def _options(request: Request, services: Services) -> Response:
    headers = capabilities(services.settings.max_upload_bytes)
    headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
    return Response(status_code=204, headers=headers)


@router.options(FILES)
async def options_files(request: Request, services: ServicesDep) -> Response:
    """What this tus server supports (no Tus-Resumable needed)."""
    return _options(request, services)


@router.options(FILES + "{upload_id}")
async def options_upload(request: Request, services: ServicesDep) -> Response:
    return _options(request, services)


def _upload_headers(upload: ResumableUpload) -> dict[str, str]:
    headers = tus_headers(
        Upload_Offset=str(upload.received),
        Upload_Length=str(upload.length),
        Upload_Expires=http_date(upload.expires_at),
        Cache_Control="no-store",
    )
    if upload.metadata_header:
        headers["Upload-Metadata"] = upload.metadata_header
    if upload.task_id is not None:
        headers[TASK_ID_HEADER] = str(upload.task_id)
    return headers


@router.post(FILES, status_code=201)
@_answers_tus
async def create_upload(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    key: KeyDep,
    version: _TusVersion = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """tus `creation`: a new upload of Upload-Length bytes; Location names it. Counted against the
    key's limits (api.key_limits) here, once per upload, not per PATCH, and only once every other
    check has passed: a request refused for its headers or for TUS_MAX_OPEN_UPLOADS costs no quota.

    A creation repeated with its Idempotency-Key, length and metadata while the upload it made has
    no byte yet (the client lost the 201, so never had its Location) is answered with that upload,
    not counted again and not made twice."""
    check_version(version)
    settings = services.settings
    if request.headers.get("upload-defer-length") is not None:
        raise TusRefused(400, DEFER_LENGTH)
    length = byte_count("Upload-Length", request.headers.get("upload-length"))
    if length == 0:
        raise TusRefused(400, EMPTY_FILE)
    if length > settings.max_upload_bytes:
        raise TusRefused(413, TOO_LARGE.format(limit=settings.max_upload_bytes))
    metadata_header = request.headers.get("upload-metadata", "").strip()
    fields = parse_metadata(metadata_header)
    if idempotency_key is not None and not well_formed_key(idempotency_key):
        raise TusRefused(400, BAD_IDEMPOTENCY_KEY)
    # What can be checked without the image, now: not after the client has sent 100 MB.
    checked_fields(fields, METADATA_FIELDS)
    resolved_processing(services, fields)
    requested_priority(fields, key)
    await requested_callback(services, fields)
    async with services.sessions() as session:
        stored_key = None if idempotency_key is None else scoped_key(idempotency_key, caller)
        if stored_key is not None:
            made = await resumable.unstarted_with_key(session, caller, stored_key, length, metadata_header)
            if made is not None:
                return _created(made, admission=None)
        open_count = await resumable.count_open(session, caller)
        if open_count >= settings.tus_max_open_uploads:
            raise TusRefused(429, TOO_MANY_OPEN.format(count=open_count, limit=settings.tus_max_open_uploads))
        # Counted even when a task holds the key: nothing records that until the upload completes,
        # when the task may be gone (deleted) and a new one made. A client that lost an answer resumes
        # its upload (HEAD, PATCH), which is not counted.
        admission = await admit_upload(services, key)
        upload = ResumableUpload(
            id=resumable.new_upload_id(),
            owner=caller,
            length=length,
            received=0,
            metadata_header=metadata_header,
            fields=fields,
            idempotency_key=stored_key,
            pieces=[],
            expires_at=await resumable.expires_at(session, timedelta(seconds=settings.tus_expiry_seconds)),
        )
        session.add(upload)
        await session.commit()
    return _created(upload, admission=admission)


def _created(upload: ResumableUpload, *, admission: Verdict | None) -> Response:
    headers = tus_headers(
        Location=f"{FILES}{upload.id}",
        Upload_Offset=str(upload.received),
        Upload_Expires=http_date(upload.expires_at),
    )
    return Response(status_code=201, headers={**headers, **limit_headers(admission)})


async def _visible(services: Services, upload_id: str, caller: str | None) -> ResumableUpload:
    """The upload the caller may see; 404 for none (or another key's), 410 once expired."""
    async with services.sessions() as session:
        upload = await resumable.get(session, upload_id) if len(upload_id) == 32 else None
        if upload is None or (caller is not None and upload.owner != caller):
            raise TusRefused(404, UPLOAD_NOT_FOUND)
        if await resumable.expired(session, upload):
            raise TusRefused(410, UPLOAD_EXPIRED)
        return upload


@router.get(FILES + "{upload_id}")
@_answers_tus
async def upload_offset(
    upload_id: str, services: ServicesDep, caller: CallerDep, version: _TusVersion = None
) -> Response:
    """tus core HEAD (a GET answers the same, without a body): how many bytes arrived."""
    check_version(version)
    upload = await _visible(services, upload_id, caller)
    return Response(status_code=200, headers=_upload_headers(upload))


@router.delete(FILES + "{upload_id}", status_code=204)
@_answers_tus
async def terminate_upload(
    upload_id: str, services: ServicesDep, caller: CallerDep, version: _TusVersion = None
) -> Response:
    """tus `termination`: the upload and its stored bytes are removed (a task it became stays)."""
    check_version(version)
    return await _terminate(upload_id, services, caller)


async def _terminate(upload_id: str, services: Services, caller: str | None) -> Response:
    await _visible(services, upload_id, caller)
    async with services.sessions() as session:
        if not await resumable.delete_upload(session, services.storage, upload_id):
            raise TusRefused(404, UPLOAD_NOT_FOUND)
    return Response(status_code=204, headers=tus_headers())


@router.patch(FILES + "{upload_id}")
@_answers_tus
async def append(
    upload_id: str, request: Request, services: ServicesDep, caller: CallerDep, version: _TusVersion = None
) -> Response:
    """tus core PATCH: bytes at Upload-Offset; the one that completes the upload makes the task."""
    check_version(version)
    return await _append(upload_id, request, services, caller)


@router.post(FILES + "{upload_id}")
@_answers_tus
async def overridden(
    upload_id: str, request: Request, services: ServicesDep, caller: CallerDep, version: _TusVersion = None
) -> Response:
    """X-HTTP-Method-Override: a POST standing in for PATCH, DELETE or HEAD (for clients and
    proxies that cannot send those)."""
    check_version(version)
    method = request.headers.get("x-http-method-override", "").upper()
    if method == "PATCH":
        return await _append(upload_id, request, services, caller)
    if method == "DELETE":
        return await _terminate(upload_id, services, caller)
    if method == "HEAD":
        upload = await _visible(services, upload_id, caller)
        return Response(status_code=200, headers=_upload_headers(upload))
    if method:
        raise TusRefused(400, BAD_OVERRIDE)
    # POST itself is not a method of an upload (only a stand-in for one), so Allow leaves it out.
    allowed = allowed_methods(request.app.router.routes, request.scope)
    raise TusRefused(405, BAD_OVERRIDE, Allow=", ".join(method for method in allowed if method != "POST"))


async def _append(upload_id: str, request: Request, services: Services, caller: str | None) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OFFSET_CONTENT_TYPE:
        raise TusRefused(415, WRONG_CONTENT_TYPE)
    offset = byte_count("Upload-Offset", request.headers.get("upload-offset"))
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    upload = await _visible(services, upload_id, caller)
    if upload.task_id is not None:
        raise TusRefused(409, ALREADY_FINISHED)
    if offset != upload.received:
        raise TusRefused(409, OFFSET_MISMATCH.format(sent=offset, received=upload.received))
    remaining = upload.length - offset
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > remaining:
            raise TusRefused(413, BEYOND_LENGTH.format(length=upload.length))
        if len(upload.pieces) >= MAX_PIECES and int(declared) != remaining:
            raise TusRefused(400, TOO_MANY_PIECES)

    temp, count, disconnected = await _receive_piece(request, services, remaining, checksum, upload)
    if count == 0:
        remove_quietly(temp)
        if disconnected:
            raise ClientDisconnect
        return Response(status_code=204, headers=_upload_headers(upload))
    if len(upload.pieces) >= MAX_PIECES and offset + count != upload.length:
        # A chunked PATCH (no Content-Length) is judged once received: it must have been the rest.
        remove_quietly(temp)
        raise TusRefused(400, TOO_MANY_PIECES)
    piece = resumable.new_piece_name()
    with storage_refusals(temp):
        # Synced in a thread of its own, as large as a PATCH may be: not in the store's batch of small
        # uploads (core/storage/group_sync.py), whose syncs would wait for its pages.
        await anyio.to_thread.run_sync(sync_path, temp)
        await services.storage.keep(Area.RESUMABLE, temp, piece)
    answer = await _add_piece(
        services, upload_id, offset, count, piece, completes=offset + count == upload.length
    )
    if disconnected:  # kept what came; nobody is left to read an answer
        raise ClientDisconnect
    return answer


async def _receive_piece(
    request: Request,
    services: Services,
    remaining: int,
    checksum: tuple[Any, bytes] | None,
    upload: ResumableUpload,
) -> tuple[Path, int, bool]:
    """The PATCH body in a temporary file: (its path, its size, whether the client went away
    before the end). Refused past `remaining` bytes, or on a checksum mismatch (nothing kept)."""
    temp = services.storage.folders.temp_upload_path()
    count = 0
    disconnected = False
    chunks = request.stream()
    try:
        # Page-cache writes of one chunk at a time, as POST /upload does (api/uploads.py).
        with open(temp, "wb") as target:  # noqa: ASYNC230
            try:
                async for chunk in chunks:
                    count += len(chunk)
                    if count > remaining:
                        raise TusRefused(413, BEYOND_LENGTH.format(length=upload.length))
                    if checksum is not None:
                        checksum[0].update(chunk)
                    target.write(chunk)
            except ClientDisconnect:
                disconnected = True
    except TusRefused:
        remove_quietly(temp)
        raise
    except OSError as exc:
        remove_quietly(temp)
        raise UploadRefused(503, STORAGE_FAILED) from exc
    except BaseException:
        remove_quietly(temp)
        raise
    if checksum is not None:
        if disconnected:  # a part cannot be checked against the whole body's digest
            remove_quietly(temp)
            raise ClientDisconnect
        if checksum[0].digest() != checksum[1]:
            remove_quietly(temp)
            raise TusRefused(460, CHECKSUM_MISMATCH)
    return temp, count, disconnected


async def _add_piece(
    services: Services, upload_id: str, offset: int, count: int, piece: str, *, completes: bool
) -> Response:
    if not completes:
        return await _add_piece_locked(services, upload_id, offset, count, piece)
    async with _finishing:
        return await _add_piece_locked(services, upload_id, offset, count, piece)


async def _add_piece_locked(
    services: Services, upload_id: str, offset: int, count: int, piece: str
) -> Response:
    """Add a stored piece to its upload under the row's lock; the PATCH that completes the upload
    makes the task before the lock is released."""
    storage = services.storage
    async with services.sessions() as session:
        try:
            upload = await resumable.lock(session, upload_id)
            if upload is None:
                raise TusRefused(404, UPLOAD_NOT_FOUND)
            if upload.received != offset or upload.task_id is not None:
                # Another PATCH got there first (the same bytes, sent twice over two connections).
                raise TusRefused(409, OFFSET_MISMATCH.format(sent=offset, received=upload.received))
            pieces = [*upload.pieces, piece]
            if offset + count < upload.length:
                upload.received = offset + count
                upload.pieces = pieces
                await session.commit()
                return Response(status_code=204, headers=_upload_headers(upload))
            made = await _finish(services, upload, pieces)
        except (TusRefused, UploadRefused, HTTPException) as exc:
            status = exc.status_code
            await session.rollback()
            if status < 500 and status not in (404, 409):
                # The whole file was refused (not an image, too many pixels, a key reused...):
                # the upload cannot become anything else, so it goes, and its pieces with it.
                await resumable.delete_upload(session, storage, upload_id)
            await resumable.remove_pieces(storage, [piece])
            raise
        except BaseException:
            await session.rollback()
            await resumable.remove_pieces(storage, [piece])
            raise
        upload.received = upload.length
        upload.pieces = []
        upload.task_id = made.task_id
        await session.commit()
        headers = _upload_headers(upload)
    await resumable.remove_pieces(storage, pieces)
    await queue_made(services, made)  # with the row's lock and session let go
    return Response(status_code=204, headers=headers)


async def _finish(services: Services, upload: ResumableUpload, pieces: list[str]) -> Intake:
    """Join the pieces into one temporary file, identify it and make it a task (not yet queued)."""
    settings = services.settings
    temp, size, sha256 = await _join(services, pieces)
    info = await identify_file(
        temp, size, max_pixels=settings.max_image_pixels, max_frames=settings.max_frames
    )
    fields = dict(upload.fields)
    received = ReceivedUpload(
        temp_path=temp,
        display_name=display_name(fields.get("filename") or fields.get("name")),
        size_bytes=size,
        sha256=sha256,
        info=info,
        text_fields=fields,
    )
    return await make_task(
        services,
        received,
        known=METADATA_FIELDS,
        key=upload.idempotency_key,
        owner=upload.owner,
        policy=policy_of(services.settings.api_keys, upload.owner),
    )


async def _join(services: Services, pieces: list[str]) -> tuple[Path, int, str]:
    """The pieces, in order, in one temporary file: (path, size, SHA-256 hex). One chunk at a time."""
    storage = services.storage
    temp = storage.folders.temp_upload_path()
    digest = hashlib.sha256()
    size = 0
    try:
        with storage_refusals(temp), open(temp, "wb") as target:  # noqa: ASYNC230
            for name in pieces:
                found = await storage.find(Area.RESUMABLE, name)
                if found is None:
                    # Stored, then gone: a local folder not shared between replicas, or removed by hand.
                    raise StorageUnavailable(f"piece {name} of a resumable upload is missing")
                if isinstance(found, Path):
                    size += await anyio.to_thread.run_sync(_copy, found, target, digest)
                else:
                    async for chunk in found.chunks:
                        digest.update(chunk)
                        target.write(chunk)
                        size += len(chunk)
    except BaseException:
        remove_quietly(temp)
        raise
    return temp, size, digest.hexdigest()


def _copy(source: Path, target: Any, digest: Any) -> int:
    copied = 0
    with open(source, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
            target.write(chunk)
            copied += len(chunk)
    return copied
