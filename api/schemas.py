"""Request and response models of the HTTP API (what /docs shows); never ORM classes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.formats import CONTENT_TYPES
from core.models import DEFAULT_PRIORITY, ImageTask, Priority, TaskStatus
from core.processing.outputs import OutputRecord
from core.tracing import trace_id_of

DATABASE_UNAVAILABLE = "The database is unavailable; nothing was stored. Please try again shortly."

_EXAMPLE_PROCESSING = [
    {
        "name": "main",
        "preset": "thumbnail",
        "ops": [{"op": "resize", "width": 256, "height": 256, "mode": "fit", "enlarge": False}],
    }
]
_EXAMPLE_TASK: dict[str, Any] = {
    "task_id": 42,
    "filename": "holiday.jpg",
    "status": "done",
    "upload_time": "2026-12-04T10:00:00.000000Z",
    "error": None,
    "attempts": 1,
    "started_at": "2026-12-04T10:00:00.200000Z",
    "finished_at": "2026-12-04T10:00:00.900000Z",
    "processed_url": "/processed/0f8e1c2a9b7d4e6f8a1b2c3d4e5f6a7b.jpg",
    "processing": _EXAMPLE_PROCESSING,
    "focus": None,
    "outputs": [
        {
            "name": "main",
            "url": "/processed/0f8e1c2a9b7d4e6f8a1b2c3d4e5f6a7b.jpg",
            "content_type": "image/jpeg",
            "width": 256,
            "height": 171,
            "frames": 1,
            "size_bytes": 10342,
        }
    ],
    "callback": None,
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "priority": "normal",
}


class UploadResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task_id": 42,
                    "filename": "holiday.jpg",
                    "message": "Upload accepted; the image is queued for processing.",
                    "status_url": "/status/42",
                    "result_url": "/result/42",
                }
            ]
        }
    )

    task_id: int
    filename: str = Field(description="The client's file name, kept for display only.")
    message: str
    status_url: str
    result_url: str
    ignored_fields: list[str] = Field(
        default_factory=list,
        description="Form fields that are not the API's (a submit button, a CSRF token), ignored; "
        "a field that looks like one of the API's misspelt is refused with 422 instead.",
    )


class RequestedOutput(BaseModel):
    name: str
    preset: str | None = Field(description="The preset it came from; null for an `ops` list.")
    ops: list[dict[str, Any]] = Field(description="The operations, in order, with every parameter.")


_UNKNOWN_BEFORE = "null on tasks finished before outputs were recorded"


class OutputResponse(BaseModel):
    name: str
    url: str
    content_type: str
    width: int | None = Field(description=_UNKNOWN_BEFORE)
    height: int | None = Field(description=_UNKNOWN_BEFORE)
    frames: int | None = Field(description=_UNKNOWN_BEFORE)
    size_bytes: int | None = Field(description=_UNKNOWN_BEFORE)


class CallbackStatus(BaseModel):
    url: str
    state: str | None = Field(
        description="null until the task ends; then `pending`, `delivered` or `failed` (after every try)."
    )
    attempts: int
    error: str | None = Field(description="Why the last try failed.")


class PlaceholderResponse(BaseModel):
    """What to show while the outputs are made: recorded by the worker on its first decode of the
    input, before any output is rendered."""

    thumbhash: str = Field(
        description="ThumbHash (https://evanw.github.io/thumbhash/) of the picture, standard base64; "
        "decodes to a blurred preview of about 32 px with the picture's aspect ratio and alpha."
    )
    dominant_color: str = Field(
        description="The picture's commonest colour, `#rrggbb`.", pattern="^#[0-9a-f]{6}$"
    )
    width: int = Field(description="The input's width as displayed (after its EXIF orientation).")
    height: int = Field(description="The input's height as displayed (after its EXIF orientation).")


class TaskStatusResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_TASK]})

    task_id: int
    filename: str
    status: TaskStatus
    upload_time: datetime
    error: str | None = Field(description="Why the task failed, in words meant for people.")
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    processed_url: str | None = Field(
        description="Where the processed image is (the first output), once `done`; while a reprocess "
        "runs (and after one that failed), the previous output's."
    )
    processing: list[RequestedOutput] = Field(description="What the upload asked for, one entry per output.")
    focus: tuple[float, float] | None = Field(
        default=None,
        description="The upload's `focus` field, [x, y] fractions (0-1) of the picture as displayed, from "
        'its top left: the point `gravity: "focus"` keeps. null when none was given.',
        examples=[[0.3, 0.6]],
    )
    outputs: list[OutputResponse] | None = Field(
        default=None,
        description="Every output once `done`, in the order asked for; while a reprocess runs (and "
        "after one that failed), the previous outputs, still served until the new ones replace them.",
    )
    callback: CallbackStatus | None = Field(default=None, description="The `callback_url` delivery, if any.")
    placeholder: PlaceholderResponse | None = Field(
        default=None, description="null until a worker has decoded the input (and on tasks from before it)."
    )
    trace_id: str | None = Field(
        default=None,
        description="The OpenTelemetry trace of this task (32 hex digits), to look up in a trace viewer; "
        "null when the upload was not traced (OTEL_EXPORTER_OTLP_ENDPOINT unset on the API).",
        examples=["4bf92f3577b34da6a3ce929d0e0e4736"],
    )
    priority: Priority = Field(
        default=DEFAULT_PRIORITY,
        description="The upload's `priority`: waiting `interactive` tasks go to the workers before "
        "`normal` ones, and those before `bulk` ones.",
    )


class TaskPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_EXAMPLE_TASK], "next_cursor": 41}]})

    items: list[TaskStatusResponse] = Field(description="Newest first.")
    next_cursor: int | None = Field(description="Pass as `cursor` for the next page; null on the last one.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "Task not found"}]})

    detail: str = Field(description="What went wrong, in words meant for people.")


class HealthResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str = "ok"


class ReadinessResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ready", "database": "ok", "nats": "ok"},
                {"status": "unavailable", "database": "unreachable", "nats": "ok"},
            ]
        }
    )

    status: str = Field(description="`ready`, or `unavailable` when a dependency is down.")
    database: str
    nats: str
    storage: str | None = Field(
        default=None,
        description="Only with STORAGE_BACKEND=s3: `ok`, or why the bucket cannot be used now (with "
        "`nats`, the image buckets count as part of `nats`).",
    )


def status_url(task_id: int) -> str:
    return f"/status/{task_id}"


def result_url(task_id: int) -> str:
    return f"/result/{task_id}"


def processed_url(task: ImageTask) -> str | None:
    # Not only once `done`: a task being reprocessed keeps its previous outputs, still served.
    if task.output_name is None:
        return None
    return f"/processed/{task.output_name}"


def _outputs(task: ImageTask) -> list[OutputResponse] | None:
    if not task.outputs:
        return None
    records = [OutputRecord.model_validate(item) for item in task.outputs]
    return [
        OutputResponse(
            name=record.name,
            url=f"/processed/{record.file}",
            content_type=CONTENT_TYPES[record.format],
            width=record.width,
            height=record.height,
            frames=record.frames,
            size_bytes=record.size_bytes,
        )
        for record in records
    ]


def _focus(task: ImageTask) -> tuple[float, float] | None:
    # Stored only when given (rows from before it, and uploads without one, have no key).
    point = task.processing.get("focus")
    return (float(point[0]), float(point[1])) if point else None


def task_status(task: ImageTask) -> TaskStatusResponse:
    return TaskStatusResponse(
        task_id=task.id,
        filename=task.filename,
        status=TaskStatus(task.status),
        upload_time=task.upload_time,
        error=task.error,
        attempts=task.attempts,
        started_at=task.started_at,
        finished_at=task.finished_at,
        processed_url=processed_url(task),
        processing=[RequestedOutput.model_validate(item) for item in task.processing["outputs"]],
        focus=_focus(task),
        outputs=_outputs(task),
        callback=CallbackStatus(
            url=task.callback_url,
            state=task.callback_state,
            attempts=task.callback_attempts,
            error=task.callback_error,
        )
        if task.callback_url
        else None,
        placeholder=PlaceholderResponse.model_validate(task.placeholder) if task.placeholder else None,
        trace_id=trace_id_of(task.traceparent),
        priority=Priority(task.priority),
    )


class DirectUploadRequest(BaseModel):
    """`POST /uploads`: an upload to send straight to the bucket, and how to process it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"filename": "holiday.jpg", "size": 48_000_000, "content_type": "image/jpeg"}]
        },
    )

    filename: str = Field(
        min_length=1, max_length=1000, description="The file's name, kept for display only."
    )
    size: int = Field(gt=0, description="The file's size in bytes: the bucket refuses a larger one.")
    content_type: str = Field(
        max_length=100,
        description="The file's type as the client sees it; the server identifies it from its bytes.",
    )
    preset: str | None = Field(default=None, max_length=8192)
    # As the form's text fields, or the JSON value itself.
    ops: str | list[Any] | None = None
    outputs: str | dict[str, Any] | None = None
    focus: str | None = Field(default=None, max_length=100)
    callback_url: str | None = Field(default=None, max_length=8192)
    priority: Priority | None = Field(
        default=None, description="As `/upload`'s `priority`; without it, the API key's default."
    )


class DirectUploadResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "upload_id": "4c1d0e6f9a8b7c6d5e4f3a2b1c0d9e8f",
                    "url": "https://bucket.s3.example.com/",
                    "fields": {
                        "key": "imagequeue/uploads/0f8e1c2a9b7d4e6f8a1b2c3d4e5f6a7b.jpg",
                        "policy": "…",
                    },
                    "complete_url": "/uploads/4c1d0e6f9a8b7c6d5e4f3a2b1c0d9e8f/complete",
                    "expires_at": "2026-12-04T10:15:00Z",
                }
            ]
        }
    )

    upload_id: str
    url: str = Field(description="POST the file here as multipart/form-data: `fields` first, then `file`.")
    fields: dict[str, str]
    complete_url: str = Field(description="POST here once the bucket has answered 204.")
    expires_at: datetime = Field(description="The POST must be sent before this.")
