"""The `image_tasks` table: one row per upload, the record of truth for its processing.

Status machine (the only transitions the code makes, all in core/tasks.py):

    pending ──claimed by a worker──▶ processing ──▶ done
       ▲                              │    │
       └── released, given back, ─────┘    └──▶ failed   (bad image, or out of attempts)
           or its lease ran out

- processing → pending: an attempt failed and is released for the next delivery (the attempt
  counted); a file store outage gave it back (not counted); or the API's lease sweep found its
  lease (`leased_until`) run out, its worker gone, and unset `queued_at` too, so the outbox relay
  queues it again (or the sweep marks it failed, once it has used all its attempts).
- A worker may also claim a `processing` row whose lease ran out, without waiting for the sweep.
- A worker's result is recorded even if the sweep put its row back to `pending` meanwhile.

`done` and `failed` are final: a redelivered message for such a row is acknowledged and ignored.
Only a reprocess (core/reprocessing.py, `POST /tasks/{id}/reprocess` or a bulk job) takes a final
row back to `pending`, with new processing and a new generation; its previous outputs stay in
`outputs` until the worker's finish replaces them.
`queued_at` is set once the task id is safely in JetStream; rows still NULL there are published
again by the API's outbox relay, so an upload accepted while NATS was down is not lost.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


FINAL_STATUSES = (TaskStatus.DONE, TaskStatus.FAILED)

# The id column is a PostgreSQL integer: larger ids cannot exist, and asking the database would fail.
MAX_TASK_ID = 2**31 - 1

# Why a task failed whose every attempt ended with its worker gone (killed, out of memory). Written
# by the worker or by the API's lease sweep, whichever notices first.
INTERRUPTED_REASON = (
    "Processing was interrupted on all {attempts} attempts (the worker stopped each time); giving up."
)

_STATUS_VALUES = ", ".join(f"'{status.value}'" for status in TaskStatus)


class CallbackState(enum.StrEnum):
    """A callback's delivery: `pending` until the receiver answers 2xx (`delivered`) or every
    attempt is used (`failed`). NULL while the task is not final, or when it has no callback."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


_CALLBACK_VALUES = ", ".join(f"'{state.value}'" for state in CallbackState)


class ImageTask(Base):
    __tablename__ = "image_tasks"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status_valid"),
        # The outbox relay scans only rows not yet in JetStream: keep that scan small.
        Index("ix_image_tasks_unqueued", "id", postgresql_where="queued_at IS NULL"),
        CheckConstraint(f"callback_state IN ({_CALLBACK_VALUES})", name="callback_state_valid"),
        # The callback sender scans only deliveries still to make.
        Index(
            "ix_image_tasks_callback_due", "callback_next_at", postgresql_where="callback_state = 'pending'"
        ),
        # The reprocess sweep scans only rows whose old outputs await removal.
        Index("ix_image_tasks_superseded", "id", postgresql_where="superseded_outputs IS NOT NULL"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The client's file name, for display and the original design's bookmarks (`/result/<name>`);
    # never used to build a path.
    filename: Mapped[str] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(
        String(16), default=TaskStatus.PENDING, server_default=TaskStatus.PENDING.value, index=True
    )
    upload_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # While `processing`: until when the worker holds it (renewed by its heartbeats).
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    # Server-generated names inside UPLOADS_DIR and PROCESSED_DIR.
    input_name: Mapped[str] = mapped_column(String(64), unique=True)
    output_name: Mapped[str | None] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # Fingerprint of the API key that uploaded the task (None when API keys are off).
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    # What to make, resolved at upload (core.processing.outputs.Processing as JSON).
    processing: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # What was made, once `done` (core.processing.outputs.OutputRecord list, as JSON); `output_name`
    # is the first output's file.
    outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # Recorded by the worker as soon as it has decoded the input, before any output is made:
    # {"thumbhash", "dominant_color", "width", "height"} (worker/placeholder.py); None until then.
    placeholder: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Where to POST the final status (api/callbacks.py), and how that delivery is going.
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_state: Mapped[str | None] = mapped_column(String(16))
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    callback_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    callback_error: Mapped[str | None] = mapped_column(Text)
    # A reprocess's old outputs (OutputRecord JSON), kept served until the new ones are recorded;
    # once the task is final, the files not among `outputs` are removed and this is cleared
    # (core/reprocessing.py). NULL otherwise.
    superseded_outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)


class JobState(enum.StrEnum):
    """A bulk reprocess job (core/jobs.py): `running` ⇄ `paused`, then `done` or `cancelled` (final)."""

    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DONE = "done"


FINAL_JOB_STATES = (JobState.CANCELLED, JobState.DONE)
_JOB_STATE_VALUES = ", ".join(f"'{state.value}'" for state in JobState)


class JobTaskState(enum.StrEnum):
    """One matched task of a job: `waiting` to be queued, `queued` (in flight), then `done` or
    `failed` as the task ended, or `skipped` (gone, or not finished, when the job reached it)."""

    WAITING = "waiting"
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


_JOB_TASK_STATE_VALUES = ", ".join(f"'{state.value}'" for state in JobTaskState)


class ReprocessJob(Base):
    """One bulk reprocess: the owner's tasks a filter matched when it was made, reprocessed a few
    at a time (core/jobs.py)."""

    __tablename__ = "reprocess_jobs"
    __table_args__ = (CheckConstraint(f"state IN ({_JOB_STATE_VALUES})", name="reprocess_job_state_valid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16))
    # The request's filter, as given (api/reprocess_schemas.py JobFilter), and the processing to apply.
    filter: Mapped[dict[str, Any]] = mapped_column(JSONB)
    processing: Mapped[dict[str, Any]] = mapped_column(JSONB)
    matched: Mapped[int] = mapped_column(Integer)
    max_in_flight: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReprocessJobTask(Base):
    """A task a job matched, and how far the job has taken it (JobTaskState)."""

    __tablename__ = "reprocess_job_tasks"
    __table_args__ = (
        CheckConstraint(f"state IN ({_JOB_TASK_STATE_VALUES})", name="reprocess_job_task_state_valid"),
        # The job's next tasks (keyset by task id) and its counts by state.
        Index("ix_reprocess_job_tasks_state", "job_id", "state", "task_id"),
    )

    job_id: Mapped[int] = mapped_column(ForeignKey("reprocess_jobs.id", ondelete="CASCADE"), primary_key=True)
    # No foreign key: a task deleted while its job runs is counted failed, not a broken job.
    task_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
