"""From a received upload to a task: the checks and the answer every ingest path shares.

`POST /upload` (api/routes/tasks.py) and a finished tus upload (api/routes/resumable.py) both end
with an identified image in a temporary file and its text fields (form fields, or Upload-Metadata).
From there the path is one: misspelt fields refused, processing resolved and its cost checked
against the image, the callback URL vetted, the Idempotency-Key looked up (a replay answers the first
task), the file kept and the row inserted, the task id published.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import HTTPException

from api.callback_urls import CallbackRefused, vet_callback_url
from api.form_fields import FieldMisspelt, ignored_fields
from api.key_limits import admit_upload
from api.openapi import IDEMPOTENCY_KEY_PATTERN
from api.state import Services
from api.uploads import ReceivedUpload, storage_refusals
from core import tasks, tracing
from core.api_keys import PRIORITIES, KeyPolicy
from core.models import DEFAULT_PRIORITY, ImageTask, Priority
from core.processing.cost import cost_refusal, output_frames
from core.processing.forms import resolve
from core.processing.operations import ProcessingInvalid
from core.processing.outputs import Processing
from core.storage import new_stored_name, remove_quietly

BAD_IDEMPOTENCY_KEY = "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces."
IDEMPOTENCY_KEY_REUSED = "This Idempotency-Key was already used for a different file or processing."
# Besides the file: how to process it (core.processing), and where to report the end (callbacks).
PROCESSING_FIELDS = ("preset", "ops", "outputs", "focus", "priority")
CALLBACKS_OFF = "This server sends no callbacks (its WEBHOOK_SECRET setting is empty)."
BAD_PRIORITY = "`priority` must be one of: interactive, normal, bulk."
PRIORITY_ABOVE_CAP = (
    "`priority`: this API key may ask for {most} at most (its max_priority); send one of: {allowed}, "
    "or leave it out."
)

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def well_formed_key(raw: str) -> bool:
    return bool(_IDEMPOTENCY_KEY.fullmatch(raw))


def scoped_key(raw: str, caller: str | None) -> str:
    """The Idempotency-Key as stored: scoped to the caller's API key, so keys cannot collide."""
    return raw if caller is None else f"{caller}:{raw}"


@dataclass(frozen=True)
class Intake:
    """What became of an upload: its task (new, or the one its Idempotency-Key made before)."""

    task_id: int
    filename: str
    replayed: bool
    ignored: list[str]
    # For a replay that an Idempotency-Key did not cause (a direct upload completed twice).
    message: str | None = None


def checked_fields(fields: dict[str, str], known: Sequence[str]) -> list[str]:
    """The fields that are not ours (a submit button, a CSRF token); 422 for a misspelt one."""
    try:
        return ignored_fields(fields, known)
    except FieldMisspelt as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def resolved_processing(services: Services, fields: dict[str, str]) -> Processing:
    """The processing fields, validated and resolved; 422 naming the field otherwise. Needs no image:
    a resumable upload is checked this far when it is created, before its bytes come."""
    settings = services.settings
    try:
        return resolve(
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


def requested_priority(fields: dict[str, str], policy: KeyPolicy | None) -> Priority:
    """The `priority` field, else the key's default (its API_KEYS entry's `priority`); 422 for a
    value that is not one, or one above the key's `max_priority` (when its entry sets one)."""
    raw = fields.get("priority")
    if not raw:
        return DEFAULT_PRIORITY if policy is None else Priority(policy.priority)
    try:
        priority = Priority(raw)
    except ValueError:
        raise HTTPException(status_code=422, detail=BAD_PRIORITY) from None
    most = None if policy is None else policy.max_priority
    if most is not None and PRIORITIES.index(priority) < PRIORITIES.index(most):
        # Refused, not lowered: an upload never runs at another priority than the one it asked for.
        allowed = ", ".join(PRIORITIES[PRIORITIES.index(most) :])
        raise HTTPException(status_code=422, detail=PRIORITY_ABOVE_CAP.format(most=most, allowed=allowed))
    return priority


def _check_cost(services: Services, upload: ReceivedUpload, processing: Processing) -> None:
    fields = upload.text_fields
    limit = services.settings.max_output_pixels
    for output in processing.outputs:
        info = upload.info
        frames = output_frames(output, info.format, info.frames)
        refused = cost_refusal(output, info.width, info.height, frames, limit=limit)
        if refused:
            field = f"outputs.{output.name}" if "outputs" in fields else "preset" if output.preset else "ops"
            raise HTTPException(status_code=422, detail=f"`{field}`: {refused}")


async def requested_callback(services: Services, fields: dict[str, str]) -> str | None:
    url = fields.get("callback_url")
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
    services: Services, key: str, upload: ReceivedUpload, processing: Processing, callback_url: str | None
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


async def _create_task(
    services: Services,
    upload: ReceivedUpload,
    processing: Processing,
    callback_url: str | None,
    key: str | None,
    owner: str | None,
    stored_name: str | None,
    priority: Priority,
) -> int:
    """Keep the upload's file (unless it is stored already, as `stored_name`), then insert its row;
    the new task's id."""
    storage = services.storage
    if stored_name is not None:
        input_name = stored_name
    else:
        input_name = new_stored_name(upload.info.extension)
        with storage_refusals():
            await storage.keep_upload(upload.temp_path, input_name)
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
        # The upload's span, kept so that later spans (a relay's publish, the callback) join its trace.
        traceparent=tracing.current_traceparent(),
        priority=priority,
    )
    return await tasks.insert_task(services.driver_pool, storage, new_task, keep_file=stored_name is not None)


async def make_task(
    services: Services,
    received: ReceivedUpload,
    *,
    known: Sequence[str],
    key: str | None,
    owner: str | None,
    stored_name: str | None = None,
    policy: KeyPolicy | None = None,
    count_if_new: bool = False,
) -> Intake:
    """Check the upload's fields against its image and make it a task (or find the one its key
    made), committed but not yet handed to the dispatcher: then call queue_made. The temporary
    file is gone afterwards, whatever happens. With `stored_name`, the file is
    in the store already (a direct upload) and only the row is made. With `count_if_new`, the upload
    was not counted against the key's limits when it started (a task held its Idempotency-Key then,
    so it looked like a replay): if it makes a task after all (that task was deleted meanwhile), it is
    counted now, or refused. Raises HTTPException or UploadRefused with the answer for the client."""
    try:
        ignored = checked_fields(received.text_fields, known)
        processing = resolved_processing(services, received.text_fields)
        _check_cost(services, received, processing)
        callback_url = await requested_callback(services, received.text_fields)
        priority = requested_priority(received.text_fields, policy)
        # A session only for a keyed upload: the rest runs on the driver pool (see _create_task).
        existing = await _task_for_key(services, key, received, processing, callback_url) if key else None
        if existing is None:
            if count_if_new:
                await admit_upload(services, policy)
            try:
                task_id = await _create_task(
                    services, received, processing, callback_url, key, owner, stored_name, priority
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
    if existing is not None:
        return Intake(existing.id, existing.filename, replayed=True, ignored=ignored)
    tracing.annotate(**{tracing.TASK_ID: task_id})
    return Intake(task_id, received.display_name, replayed=False, ignored=ignored)


async def queue_made(services: Services, made: Intake) -> None:
    """Hand a new task to the dispatcher (a replayed one is queued already), which publishes it
    (without a window) or waits a bounded while for the pass that sees it (api/dispatcher.py
    `queue_new`). Called once the caller holds no lock and no session: the pass, or the queued
    mark's write, needs a pooled connection of its own."""
    if not made.replayed:
        await services.dispatcher.queue_new(made.task_id)
