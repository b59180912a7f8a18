"""Request and response models of reprocessing: one task (`POST /tasks/{id}/reprocess`) and bulk
jobs (`POST /tasks/reprocess`, `/jobs/...`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.models import JobState, TaskStatus


class ProcessingRequest(BaseModel):
    """What to make instead: one of `preset`, `ops`, `outputs`, as the upload's fields of those
    names (`ops` and `outputs` as JSON values, or as the JSON text the upload form takes)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"preset": "thumbnail"}, {"ops": [{"op": "resize", "width": 320}]}]},
    )

    preset: str | None = Field(default=None, max_length=64, description="A name from `GET /presets`.")
    ops: list[Any] | str | None = Field(default=None, description="A list of operations.")
    outputs: dict[str, Any] | str | None = Field(
        default=None, description="Output name -> preset name or ops list."
    )
    focus: str | None = Field(
        default=None,
        max_length=64,
        description="x,y fractions of the picture; without it, the upload's focus is kept.",
    )


class ReprocessResponse(BaseModel):
    task_id: int
    status: TaskStatus
    generation: int = Field(description="How many times the task has been reprocessed, this one included.")
    message: str
    status_url: str


class JobFilter(BaseModel):
    """Which of the caller's tasks a bulk job reprocesses: all of the conditions given."""

    model_config = ConfigDict(extra="forbid")

    status: list[TaskStatus] | TaskStatus | None = Field(
        default=None, description="`done`, `failed` (or a list); without it, every finished task."
    )
    preset: str | None = Field(
        default=None, max_length=64, description="Tasks whose (single) output was made with this preset."
    )
    uploaded_after: datetime | None = Field(default=None, description="ISO 8601; without a zone, UTC.")
    uploaded_before: datetime | None = Field(default=None, description="ISO 8601; without a zone, UTC.")

    @field_validator("uploaded_after", "uploaded_before")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        # In UTC here, so a far date with an offset fails as a 422 rather than overflowing later.
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError("must be a date and time between the years 1 and 9999") from None


class JobRequest(ProcessingRequest):
    """`POST /tasks/reprocess`: the filter, and the new processing (one of preset/ops/outputs)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"where": {"status": "done", "preset": "thumbnail"}, "preset": "thumbnail"}]
        },
    )

    where: JobFilter = Field(default_factory=JobFilter)
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="At most this many of the job's tasks queued at once (capped by "
        "REPROCESS_JOB_MAX_IN_FLIGHT, the default).",
    )


class JobResponse(BaseModel):
    job_id: int
    state: JobState
    filter: dict[str, Any]
    matched: int = Field(description="Tasks the filter matched when the job was made.")
    queued: int = Field(description="Tasks put back in the queue so far.")
    done: int
    failed: int
    skipped: int = Field(description="Matched, but gone or not finished when the job reached them.")
    in_flight: int = Field(description="Queued and not finished yet (at most the job's `max_in_flight`).")
    max_in_flight: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    events_url: str


class JobPage(BaseModel):
    items: list[JobResponse]
