"""The `image_tasks` table: one row per upload, the record of truth for its processing.

Status machine (the only transitions the code makes: the worker's and sweeps' in core/tasks.py, the
owner's controls in core/task_controls.py):

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

    pending ─┐
             ├──cancelled by its owner (POST /tasks/{id}/cancel)──▶ cancelled
  processing ┘
    failed ──retried by its owner (POST /tasks/{id}/retry)──▶ pending   (attempts start again)

- A cancelled `processing` task is abandoned by its worker at the next heartbeat (its lease renewal
  finds the row no longer `processing`); whatever it made is removed rather than recorded.
- Controls (core/task_controls.py) are conditional UPDATEs: of a cancel racing the worker's finish,
  or of two retries at once, PostgreSQL lets exactly one through.

`done`, `failed` and `cancelled` are final (but for a retry of `failed`): a redelivered message for
such a row is acknowledged and ignored. A reprocess (core/reprocessing.py, `POST /tasks/{id}/reprocess`
or a bulk job) also takes a final row back to `pending`, with new processing and a new generation;
its previous outputs stay in `outputs` until the worker's finish replaces them.

`queued_at` is set once the task id is safely in JetStream; rows still NULL there wait for the
API's dispatcher (api/dispatcher.py), which publishes them as room in the stream's window allows,
by priority and fairly between keys; an upload accepted while NATS was down is not lost either.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)
# What a key's `max_pending` counts (core.key_limits): its tasks not yet final.
UNFINISHED_STATUSES = (TaskStatus.PENDING, TaskStatus.PROCESSING)


class Priority(enum.StrEnum):
    """Which waiting task the dispatcher (api/dispatcher.py) puts in the stream first; in this
    order, most urgent first."""

    INTERACTIVE = "interactive"
    NORMAL = "normal"
    BULK = "bulk"


DEFAULT_PRIORITY = Priority.NORMAL
_PRIORITY_VALUES = ", ".join(f"'{priority.value}'" for priority in Priority)

# The id column is a PostgreSQL integer: larger ids cannot exist, and asking the database would fail.
MAX_TASK_ID = 2**31 - 1

# Why a task failed whose every attempt ended with its worker gone (killed, out of memory). Written
# by the worker or by the API's lease sweep, whichever notices first.
INTERRUPTED_REASON = (
    "Processing was interrupted on all {attempts} attempts (the worker stopped each time); giving up."
)

_STATUS_VALUES = ", ".join(f"'{status.value}'" for status in TaskStatus)
UNFINISHED_SQL = ", ".join(f"'{status.value}'" for status in UNFINISHED_STATUSES)


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
        CheckConstraint(f"priority IN ({_PRIORITY_VALUES})", name="priority_valid"),
        # The dispatcher counts the tasks in the stream by key on every pass: only those rows.
        Index(
            "ix_image_tasks_in_window",
            "owner",
            postgresql_where="queued_at IS NOT NULL AND status IN ('pending', 'processing')",
        ),
        # ... and picks the next waiting ones by priority, then by key, oldest first (core.tasks walks
        # it with row comparisons, which need no NULL: '' stands for the key-less queue).
        Index(
            "ix_image_tasks_waiting_heads",
            "priority",
            text("COALESCE(owner, '')"),
            "id",
            postgresql_where="queued_at IS NULL AND status = 'pending'",
        ),
        CheckConstraint(f"callback_state IN ({_CALLBACK_VALUES})", name="callback_state_valid"),
        # The callback sender scans only deliveries still to make.
        Index(
            "ix_image_tasks_callback_due", "callback_next_at", postgresql_where="callback_state = 'pending'"
        ),
        # A key's unfinished tasks, counted before each of its uploads when it has a max_pending.
        Index("ix_image_tasks_owner_unfinished", "owner", postgresql_where=f"status IN ({UNFINISHED_SQL})"),
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
    # How often its owner retried it (attempts start again at 0 each time): part of its message id,
    # so a retry's message is never taken for a copy of an earlier one (core.queue.message_id).
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
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
    # On a `failed` task whose run made some outputs but not all: {"generation", "made": [OutputRecord
    # JSON], "failed": [{"name", "error"}]}, so that a retry of the failed outputs only
    # (core/task_controls.py) keeps the made ones. NULL otherwise.
    partial_outputs: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
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
    # The upload span's W3C `traceparent` (core/tracing.py), so the relay's publish and the callback
    # join the task's trace; None when the upload was not traced.
    traceparent: Mapped[str | None] = mapped_column(String(55))
    # Priority (interactive, normal, bulk): the order in which waiting tasks enter the stream.
    priority: Mapped[str] = mapped_column(
        String(16), default=DEFAULT_PRIORITY, server_default=DEFAULT_PRIORITY.value
    )


class KeyRate(Base):
    """One API key's upload rate (core.key_limits): a GCRA cell, so one row and one atomic
    statement an upload, whichever API process takes it. Keys without `uploads_per_minute` have
    no row."""

    __tablename__ = "api_key_rates"
    # Unlogged: no WAL, so no WAL flush an upload (measured at ~0.25 ms of each admission:
    # bench/key_limits.py). A crash of PostgreSQL empties the table, and a standby does not have it:
    # every key then starts a fresh minute, which a limit on uploads a minute can afford.
    __table_args__ = ({"prefixes": ["UNLOGGED"]},)

    # The key's fingerprint (core.api_keys.fingerprint), as in `image_tasks.owner`.
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The theoretical arrival time: each admitted upload moves it one interval (60 s / the rate)
    # later, from now if it is in the past; an upload is admitted while it stays within a minute of now.
    tat: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Whether the statement that last touched the row admitted its upload (RETURNING cannot show
    # the row as it was before the update, which a refusal needs to tell itself from an admission).
    last_admitted: Mapped[bool] = mapped_column(Boolean)


class ResumableUpload(Base):
    """A tus upload (api/routes/resumable.py) still coming in, or finished and become a task.

    Its bytes are stored objects in Area.RESUMABLE, one per PATCH (`pieces`, in order), so any API
    replica can take the next PATCH; the row is locked while one is added. Once `received` reaches
    `length` the pieces are joined into one upload, checked and made a task like `POST /upload`
    (then `task_id` is set and the pieces removed). Past `expires_at` the sweep deletes the row
    and its pieces.
    """

    __tablename__ = "resumable_uploads"
    __table_args__ = (CheckConstraint("received >= 0 AND received <= length", name="received_within_length"),)

    # A random 32-hex id: the `/files/{id}` URL is the only handle, so it must not be guessable.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Fingerprint of the API key that created it (None when API keys are off), as tasks record it.
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    length: Mapped[int] = mapped_column(BigInteger)
    received: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Upload-Metadata as the client sent it (echoed on HEAD), and decoded (filename, preset, ...).
    metadata_header: Mapped[str] = mapped_column(Text, default="", server_default="")
    fields: Mapped[dict[str, str]] = mapped_column(JSONB)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    pieces: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    task_id: Mapped[int | None] = mapped_column(Integer)


class DirectUpload(Base):
    """An upload declared by `POST /uploads` (api/routes/direct_uploads.py), which the client sends
    straight to the S3 bucket under `object_name`. `POST /uploads/{id}/complete` checks the object
    and either makes its task (`task_id`) or refuses it (`refusal_status`, `refusal`; the object is
    deleted): completing again answers the same. Never completed, it is swept after `expires_at`
    (core.direct_uploads)."""

    __tablename__ = "direct_uploads"

    # Random, unguessable: it is the client's handle on the upload.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The API key's fingerprint (None when API keys are off): only its holder may complete it.
    owner: Mapped[str | None] = mapped_column(String(64))
    object_name: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(String(255))
    # As declared; the presigned POST refuses a larger object.
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(64))
    # The processing fields and callback_url as sent (checked at declaration, resolved at completion).
    fields: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    task_id: Mapped[int | None] = mapped_column(Integer)
    refusal_status: Mapped[int | None] = mapped_column(Integer)
    refusal: Mapped[str | None] = mapped_column(Text)


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
