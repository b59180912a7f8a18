"""The task row: every statement on `image_tasks`, its status and lease rules, and delete-with-files.

The status machine is drawn in core/models.py; this module is the only code that moves a row along
it. Two ways to the database, each where it pays:

- The statements run once per upload or per image (insert, claim, lease renewal,
  release, finish) are hand-written SQL run on asyncpg's own pool (core.db.make_driver_pool): one
  autocommit round trip each. Through a session (BEGIN, statement, COMMIT through the ORM and the
  async bridge) the worker drained at half the rate. Running them on the driver connection
  under the engine's own pool instead (one pool per process) was measured too: 220 µs of CPU per
  statement against 130 µs here (claims and finishes in turns, without pre-ping; 400 µs with
  it), about 0.2 ms more per image and per upload, so those processes keep the second pool.
- Everything else (reads for the API, the outbox relay and lease sweep, callbacks, retention,
  deletes) runs on SQLAlchemy sessions and returns ORM rows.

Errors: whatever the driver or SQLAlchemy raise for a database that cannot be reached now becomes
DatabaseUnavailable, and a second row for one Idempotency-Key becomes TaskConflict, here and
nowhere else. Any other error is a bug and passes through as it is.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, ParamSpec, TypeVar

import asyncpg
from sqlalchemy import Row, delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core import fair_order
from core.db import POOL_TIMEOUT_SECONDS, closed_under_us, is_database_unavailable, released_under_us
from core.models import (
    DEFAULT_PRIORITY,
    FINAL_STATUSES,
    INTERRUPTED_REASON,
    MAX_TASK_ID,
    CallbackState,
    ImageTask,
    Priority,
    TaskStatus,
)
from core.storage import NOT_READY, Area, Storage, StorageUnavailable, is_stored_name

log = logging.getLogger(__name__)

_UNIQUE_VIOLATION = "23505"


class DatabaseUnavailable(Exception):
    """The database cannot be reached now (down, restarting, out of connections): a passing fault,
    answered with 503 by the API and with a delayed redelivery, at no attempt's cost, by the worker."""


class TaskConflict(Exception):
    """A task with this Idempotency-Key was committed first (by a concurrent request)."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _mapping_errors(statement: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    @functools.wraps(statement)
    async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await statement(*args, **kwargs)
        except (DatabaseUnavailable, TaskConflict):
            raise
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is exc:  # a bug: as it is, with its own cause
                raise
            raise mapped from exc

    return run


# For core/task_controls.py, the other module of statements on this table.
mapping_errors = _mapping_errors


def _mapped(exc: Exception) -> Exception:
    # This module uses a driver pool's connection only inside its own `async with pool.acquire()`,
    # where nothing of ours releases it: there, a connection released under us is an outage.
    if is_database_unavailable(exc) or released_under_us(exc):
        return DatabaseUnavailable(str(exc) or type(exc).__name__)
    orig = exc.orig if isinstance(exc, IntegrityError) else exc
    if getattr(orig, "sqlstate", None) == _UNIQUE_VIOLATION:
        return TaskConflict(str(orig))
    return exc


# ---- Lease rules -------------------------------------------------------------------------------


def lease_length(ack_wait_seconds: float) -> timedelta:
    """How long a claim (and each renewal) holds a task: long enough to survive a missed heartbeat
    or two, short enough that a dead worker's task is taken over soon after JetStream redelivers."""
    return timedelta(seconds=2 * ack_wait_seconds)


# The SQL fragments below are the rules; the statements of both paths are built from them. Status
# values are written out: the table's CHECK constraint refuses any other, and
# tests/core/test_tasks.py runs every statement against the migrated schema.

# Pending, or processing under a lease that has run out (its worker is gone). The lease is the
# lock: two workers never hold one task.
_CLAIMABLE = (
    "(status = 'pending' OR (status = 'processing' AND (leased_until IS NULL OR leased_until < now())))"
)
# What the API's sweep takes back: still `processing` after its lease.
_LEASE_EXPIRED = "status = 'processing' AND leased_until < now()"
# Set by every transition to `done`, `failed` or `cancelled`: the callback, if the task has one,
# becomes due now.
_FINISHED = (
    "finished_at = now(), leased_until = NULL,"
    " callback_state = CASE WHEN callback_url IS NOT NULL THEN 'pending' END,"
    " callback_next_at = CASE WHEN callback_url IS NOT NULL THEN now() END"
)


# For core/task_controls.py: a cancel is a finish too (its callback becomes due).
FINISHED_SET = _FINISHED


# ---- The hot statements, on the driver pool -----------------------------------------------------
# JSONB values go in as json.dumps text and come back as text (asyncpg's default codec).

# Every value cast, as SQLAlchemy wrote them, so the statement's types never depend on inference.
INSERT_TASK = """\
INSERT INTO image_tasks (filename, content_type, size_bytes, width, height, sha256, input_name,
                         idempotency_key, owner, callback_url, processing, traceparent, priority)
VALUES ($1::varchar, $2::varchar, $3::bigint, $4::integer, $5::integer, $6::varchar, $7::varchar,
        $8::varchar, $9::varchar, $10::text, $11::jsonb, $12::varchar, $13::varchar)
RETURNING id"""
# Mark a task `processing`, count the attempt and lease it; no row if it is missing, final, or
# leased by a live worker.
CLAIM = f"""\
UPDATE image_tasks
SET status = 'processing', attempts = attempts + 1, started_at = now(),
    leased_until = now() + $2::interval, error = NULL
WHERE id = $1 AND {_CLAIMABLE}
RETURNING input_name, attempts, processing, width, height, content_type, started_at,
          placeholder IS NOT NULL AS has_placeholder, partial_outputs, priority"""
STATUS = "SELECT status FROM image_tasks WHERE id = $1"
GENERATION = (
    "SELECT COALESCE((processing->>'generation')::int, 0) AS generation FROM image_tasks WHERE id = $1"
)
# A claim's `started_at` is its mark: a row claimed again since (its lease ran out, another worker
# took it) is no longer the first claimant's to renew or to finish.
RENEW_LEASE = """\
UPDATE image_tasks SET leased_until = now() + $2::interval
WHERE id = $1 AND status = 'processing' AND started_at = $3
RETURNING id"""
# The placeholder, while the claim made at $3 still holds the task; one recorded by an earlier
# attempt is kept (it came from the same file).
RECORD_PLACEHOLDER = """\
UPDATE image_tasks SET placeholder = $2::jsonb
WHERE id = $1 AND status = 'processing' AND started_at = $3 AND placeholder IS NULL"""
# After a failed attempt: back to `pending` until the message comes round again. Only by the
# claim made at $2: a worker whose lease ran out must not hand back a task another worker holds.
RELEASE = """\
UPDATE image_tasks SET status = 'pending', leased_until = NULL
WHERE id = $1 AND status = 'processing' AND started_at = $2"""
# After a file store outage: back to `pending` with the attempt not counted, as if never claimed.
GIVE_BACK = """\
UPDATE image_tasks SET status = 'pending', leased_until = NULL, attempts = attempts - 1
WHERE id = $1 AND status = 'processing' AND started_at = $2"""
FINISH_DONE = f"""\
UPDATE image_tasks SET status = 'done', output_name = $2, outputs = $3::jsonb, error = NULL,
    placeholder = COALESCE(placeholder, $5::jsonb), partial_outputs = NULL, {_FINISHED}
WHERE id = $1 AND status IN ('pending', 'processing') AND started_at = $4
RETURNING id"""
# A failure that made some outputs records them ($3, see core.task_controls); one that made none
# keeps what an earlier run recorded (a retry of the failed outputs that failed whole). As strict as
# FINISH_DONE: only the claim made at $4 may fail the task, so a worker whose lease ran out (the task
# claimed again elsewhere, or retried or reprocessed since) cannot fail a run another worker holds.
FINISH_FAILED = f"""\
UPDATE image_tasks SET status = 'failed', error = $2,
    partial_outputs = COALESCE($3::jsonb, partial_outputs), {_FINISHED}
WHERE id = $1 AND status IN ('pending', 'processing') AND started_at = $4
RETURNING id"""


async def _fetchrow(pool: asyncpg.Pool, sql: str, *args: Any) -> asyncpg.Record | None:
    async with pool.acquire(timeout=POOL_TIMEOUT_SECONDS) as connection:
        return await connection.fetchrow(sql, *args)


@dataclass(frozen=True)
class NewTask:
    """An upload's row, its file already kept under `input_name`."""

    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha256: str
    input_name: str
    idempotency_key: str | None
    owner: str | None
    callback_url: str | None
    processing: dict[str, Any]
    # The upload span's W3C trace context (core.tracing), None when not traced.
    traceparent: str | None = None
    priority: Priority = DEFAULT_PRIORITY


async def insert_task(pool: asyncpg.Pool, storage: Storage, task: NewTask, *, keep_file: bool = False) -> int:
    """Insert the upload's row; the new task's id. If the row surely was not made, its upload file
    is removed (unless `keep_file`: a direct upload's object outlives a failed try, to be completed
    again); TaskConflict when another request committed the same Idempotency-Key first. A statement
    refused unsent on a connection closed under it (a PostgreSQL restart) is tried once more."""
    values = (
        task.filename,
        task.content_type,
        task.size_bytes,
        task.width,
        task.height,
        task.sha256,
        task.input_name,
        task.idempotency_key,
        task.owner,
        task.callback_url,
        json.dumps(task.processing),
        task.traceparent,
        task.priority.value,
    )
    retried = False
    while True:
        sent = False
        try:
            async with pool.acquire(timeout=POOL_TIMEOUT_SECONDS) as connection:
                sent = True
                try:
                    return await connection.fetchval(INSERT_TASK, *values)
                except asyncpg.exceptions.InternalClientError as exc:
                    # Waiting out a dead server's goodbye: ended now, so that the pool opens a new
                    # connection for the next try instead of handing this one out again.
                    if closed_under_us(exc):
                        connection.terminate()
                    raise
        except BaseException as exc:
            unsent = _refused_unsent(exc)
            # Refused unsent on a connection the server had closed while it sat in the pool (a
            # restart's terminated sessions): no row was made, so a second try cannot make two.
            # Only one: a database still going down refuses that too, and that is the answer (503).
            if unsent and not retried:
                retried = True
                log.info("insert refused unsent on a closed connection; trying once more: %s", exc)
                continue
            # Remove the file only when the row surely does not exist: the statement never left (no
            # connection, or one closed before it was sent), or the server answered it with an error.
            # A connection lost mid-statement may have committed it: keep the file its row would need
            # (at worst a file with no row; deleting it could leave a row with no file).
            if (not sent or _refused_by_server(exc) or unsent) and not keep_file:
                await _forget_upload(storage, task.input_name)
            mapped = _mapped(exc) if isinstance(exc, Exception) else exc
            if mapped is exc:
                raise
            raise mapped from exc


def _refused_unsent(exc: BaseException) -> bool:
    """Whether asyncpg refused INSERT_TASK before sending it, on a connection (or a pool) closed
    under it. The pool taking back a connection under its own `async with` is one such case here,
    and nowhere else (core.db.released_under_us)."""
    return closed_under_us(exc) or released_under_us(exc)


def _refused_by_server(exc: BaseException) -> bool:
    """Whether the server answered the statement with an error: an autocommit statement that failed
    did not commit. asyncpg makes up PostgresConnectionErrors itself when a connection drops; when
    the server sent an error and then closed it (terminated, shutting down: FATAL 57P01), that
    error is the ConnectionDoesNotExistError's cause."""
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        exc = exc.__cause__ or exc
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError)


async def _forget_upload(storage: Storage, input_name: str) -> None:
    """Remove an upload whose row could not be made. Failing that, the file is left without a row:
    wasted space, which is better than a 500 over a database error the client should see."""
    try:
        await storage.remove(Area.UPLOADS, [input_name])
    except StorageUnavailable as exc:
        log.warning("could not remove upload %s after a failed insert: %s", input_name, exc)


@dataclass(frozen=True)
class Claim:
    input_name: str
    # This attempt's number, counting the ones before it.
    attempts: int
    # What to make, as stored (core.processing.outputs.Processing as JSON).
    processing: dict[str, Any]
    # The upload's size and type, as its header said: what the render will cost.
    width: int
    height: int
    content_type: str
    # When this claim was made: the mark by which it renews and finishes the task (see RENEW_LEASE).
    started_at: datetime
    # Whether an earlier attempt recorded the placeholder already.
    has_placeholder: bool = False
    # What an earlier run made and failed to make, when only its failed outputs are retried
    # (core.task_controls.PartialOutputs as JSON); None otherwise.
    partial_outputs: dict[str, Any] | None = None
    # Which lane may render it (an interactive task may take the worker's urgent lane).
    priority: Priority = DEFAULT_PRIORITY


@_mapping_errors
async def claim(pool: asyncpg.Pool, task_id: int, lease: timedelta) -> Claim | None:
    """The task, now `processing` and leased to the caller; None if it is missing, final or leased
    by a live worker (see `status_of` for which)."""
    row = await _fetchrow(pool, CLAIM, task_id, lease)
    if row is None:
        return None
    return Claim(
        input_name=row["input_name"],
        attempts=row["attempts"],
        processing=json.loads(row["processing"]),
        width=row["width"],
        height=row["height"],
        content_type=row["content_type"],
        started_at=row["started_at"],
        has_placeholder=row["has_placeholder"],
        partial_outputs=None if row["partial_outputs"] is None else json.loads(row["partial_outputs"]),
        priority=Priority(row["priority"]),
    )


@_mapping_errors
async def status_of(pool: asyncpg.Pool, task_id: int) -> str | None:
    """The task's status; None when there is no such row (never made, or deleted)."""
    row = await _fetchrow(pool, STATUS, task_id)
    return None if row is None else row["status"]


@_mapping_errors
async def generation_of(pool: asyncpg.Pool, task_id: int) -> int | None:
    """The task's reprocess generation (core/reprocessing.py); None when there is no such row."""
    row = await _fetchrow(pool, GENERATION, task_id)
    return None if row is None else int(row["generation"])


@_mapping_errors
async def renew_lease(pool: asyncpg.Pool, task_id: int, lease: timedelta, started_at: datetime) -> bool:
    """Extend the lease of the claim made at `started_at`; False when the task is no longer that
    claim's (finished, taken back, or claimed again by another worker after the lease ran out)."""
    return await _fetchrow(pool, RENEW_LEASE, task_id, lease, started_at) is not None


@_mapping_errors
async def record_placeholder(
    pool: asyncpg.Pool, task_id: int, placeholder: Mapping[str, Any], started_at: datetime
) -> None:
    """Record the task's placeholder (worker/placeholder.py) for the claim made at `started_at`;
    nothing when the task is no longer that claim's, or already has one."""
    async with pool.acquire(timeout=POOL_TIMEOUT_SECONDS) as connection:
        await connection.execute(RECORD_PLACEHOLDER, task_id, json.dumps(placeholder), started_at)


@_mapping_errors
async def release(pool: asyncpg.Pool, task_id: int, started_at: datetime) -> None:
    """End a failed attempt of the claim made at `started_at`: back to `pending`, the attempt
    counted; nothing when the task is no longer that claim's."""
    await _fetchrow(pool, RELEASE, task_id, started_at)


@_mapping_errors
async def give_back(pool: asyncpg.Pool, task_id: int, started_at: datetime) -> None:
    """End an attempt of the claim made at `started_at` stopped by a passing fault: back to
    `pending`, the attempt not counted; nothing when the task is no longer that claim's."""
    await _fetchrow(pool, GIVE_BACK, task_id, started_at)


@_mapping_errors
async def finish_done(
    pool: asyncpg.Pool,
    task_id: int,
    outputs: list[dict[str, Any]],
    started_at: datetime,
    placeholder: Mapping[str, Any] | None = None,
) -> bool:
    """Record the outputs made (core.processing.OutputRecord JSON) by the claim made at
    `started_at`, and `placeholder` if the row has none yet (one the worker could not record on
    its own, earlier); False when the task was not that claim's any more (deleted, finished or
    claimed again elsewhere)."""
    row = await _fetchrow(
        pool,
        FINISH_DONE,
        task_id,
        outputs[0]["file"],
        json.dumps(outputs),
        started_at,
        None if placeholder is None else json.dumps(placeholder),
    )
    return row is not None


@_mapping_errors
async def finish_failed(
    pool: asyncpg.Pool,
    task_id: int,
    reason: str,
    started_at: datetime,
    partial: Mapping[str, Any] | None = None,
) -> bool:
    """Mark the task `failed` for good by the claim made at `started_at`, saying why, with the
    outputs it made and those it could not (`partial`), if it made some. Whether it was marked:
    False when the task was not that claim's any more (deleted, finished, cancelled, or claimed
    again elsewhere), which is left as it is."""
    row = await _fetchrow(
        pool, FINISH_FAILED, task_id, reason, None if partial is None else json.dumps(partial), started_at
    )
    return row is not None


# ---- Reads, on a session ------------------------------------------------------------------------


@_mapping_errors
async def get(session: AsyncSession, task_id: int) -> ImageTask | None:
    return await session.get(ImageTask, task_id)


@_mapping_errors
async def find_by_idempotency_key(session: AsyncSession, key: str) -> ImageTask | None:
    return await session.scalar(select(ImageTask).where(ImageTask.idempotency_key == key))


@_mapping_errors
async def idempotency_key_used(session: AsyncSession, key: str) -> bool:
    """Whether a task holds `key` (as stored, scoped to its API key)."""
    return bool(
        await session.scalar(select(select(ImageTask.id).where(ImageTask.idempotency_key == key).exists()))
    )


@_mapping_errors
async def find_by_input_name(session: AsyncSession, input_name: str) -> ImageTask | None:
    return await session.scalar(select(ImageTask).where(ImageTask.input_name == input_name))


@_mapping_errors
async def newest_named(session: AsyncSession, filename: str, *, owner: str | None) -> ImageTask | None:
    """The most recent task uploaded as `filename` (the client's name), only `owner`'s when one is
    given: what the original design's bookmarks (`/result/<name>`, `/processed/<name>`) meant."""
    query = select(ImageTask).where(ImageTask.filename == filename).order_by(ImageTask.id.desc()).limit(1)
    if owner is not None:
        query = query.where(ImageTask.owner == owner)
    return await session.scalar(query)


@_mapping_errors
async def owns_output(session: AsyncSession, owner: str, name: str) -> bool:
    """Whether one of `owner`'s tasks made the processed file `name`."""
    found = await session.scalar(
        select(ImageTask.id)
        .where(
            ImageTask.owner == owner,
            or_(ImageTask.output_name == name, ImageTask.outputs.contains([{"file": name}])),
        )
        .limit(1)
    )
    return found is not None


@_mapping_errors
async def count_by_status(connection: AsyncConnection) -> dict[str, int]:
    rows = await connection.execute(select(ImageTask.status, func.count()).group_by(ImageTask.status))
    return {str(status): count for status, count in rows}


@dataclass(frozen=True)
class TaskSlice:
    tasks: list[ImageTask]
    # The id to pass as `cursor` for the next page; None on the last one.
    next_cursor: int | None


@_mapping_errors
async def newest(
    session: AsyncSession,
    *,
    limit: int,
    cursor: int | None = None,
    status: TaskStatus | None = None,
    owner: str | None = None,
) -> TaskSlice:
    """At most `limit` tasks older than `cursor`, newest first; only `owner`'s when one is given.

    Keyset pagination (`id < cursor`) rather than offsets, so a page stays consistent while new
    tasks arrive and a deep page costs no more than the first (`GET /tasks` and the gallery)."""
    # One row more than asked tells whether another page follows, without a COUNT.
    query = select(ImageTask).order_by(ImageTask.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(ImageTask.status == status)
    if cursor is not None:
        query = query.where(ImageTask.id < cursor)
    if owner is not None:
        query = query.where(ImageTask.owner == owner)
    rows = list(await session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    return TaskSlice(page, page[-1].id if more else None)


# ---- The outbox relay and the lease sweep (API), in the caller's transaction ----------------------


# A task is "in the window" from its publish until it is final: in the stream, or being processed.
_IN_WINDOW = "queued_at IS NOT NULL AND status IN ('pending', 'processing')"
# Committed and waiting for the dispatcher: never published, or put back by the lease sweep.
_WAITING = "queued_at IS NULL AND status = 'pending'"
# Waiting, and for a pass that leaves new tasks to the requests that publish them (`:young`, seconds;
# 0: every row): not new (put back by a sweep, a retry or a reprocessing), or committed longer ago
# than a request's publish may take.
_WAITING_FOR_A_PASS = (
    f"{_WAITING} AND (CAST(:young AS float) = 0 OR t.attempts > 0 OR t.retries > 0"
    " OR COALESCE((t.processing->>'generation')::int, 0) > 0"
    " OR t.upload_time < now() - make_interval(secs => CAST(:young AS float)))"
)
# Any constant of ours: the key of the advisory lock every API replica's dispatcher takes.
DISPATCH_LOCK_KEY = 0x69716471

_LOCK_DISPATCH = text("SELECT pg_advisory_xact_lock(:key)")
# The tasks in the window by priority and key, at most `cap` of them (ix_image_tasks_in_window): the
# dispatcher only needs to know whether the window is full, and when it is not, it holds fewer.
_COUNT_IN_WINDOW = text(f"""\
SELECT priority, owner, count(*) AS n
FROM (SELECT priority, owner FROM image_tasks WHERE {_IN_WINDOW} LIMIT :cap) AS held
GROUP BY priority, owner""")
# The key-less queue's owner in ix_image_tasks_waiting_heads (a key's is a 32-digit fingerprint).
_KEYLESS = ""
_WAITING_KEY = "COALESCE(t.owner, '')"
_HEAD_COLUMNS = (
    "t.id, t.attempts, t.retries, t.traceparent,"
    " COALESCE((t.processing->>'generation')::int, 0) AS generation"
)
# Each (priority, key) with tasks waiting, one probe each on ix_image_tasks_waiting_heads: a skip
# scan, the next pair after the last, rather than every waiting row. Its probes (and the heads'
# below) are row comparisons and orders on that index's own columns, which no other index of the
# table serves: with plain equalities the planner may walk another (the owner's, the unqueued ids')
# and filter, through every waiting row of the other priorities or keys.
# Each probe lands on the pair's oldest task, which comes along: all a pass needs of most keys.
_WAITING_KEYS = text(f"""\
WITH RECURSIVE keys AS (
    (SELECT t.priority, {_WAITING_KEY} AS owner, {_HEAD_COLUMNS} FROM image_tasks AS t
     WHERE {_WAITING_FOR_A_PASS} ORDER BY t.priority, {_WAITING_KEY}, t.id LIMIT 1)
    UNION ALL
    SELECT next.* FROM keys CROSS JOIN LATERAL (
        SELECT t.priority, {_WAITING_KEY} AS owner, {_HEAD_COLUMNS} FROM image_tasks AS t
        WHERE {_WAITING_FOR_A_PASS} AND (t.priority, {_WAITING_KEY}) > (keys.priority, keys.owner)
        ORDER BY t.priority, {_WAITING_KEY}, t.id LIMIT 1
    ) AS next
)
SELECT * FROM keys""")
# The next `take` waiting tasks after id `after` of each (priority, key) asked for: one ordered range
# of ix_image_tasks_waiting_heads each, bounded on both sides by row comparisons (as above).
_QUEUE_HEADS = text(f"""\
SELECT k.ord, head.*
FROM unnest(
    CAST(:priorities AS text[]), CAST(:owners AS text[]), CAST(:after AS int[]), CAST(:take AS int[])
) WITH ORDINALITY AS k(priority, owner, after, take, ord)
CROSS JOIN LATERAL (
    SELECT {_HEAD_COLUMNS} FROM image_tasks AS t
    WHERE {_WAITING_FOR_A_PASS}
      AND (t.priority, {_WAITING_KEY}, t.id) > (k.priority, k.owner, k.after)
      AND (t.priority, {_WAITING_KEY}) <= (k.priority, k.owner)
    ORDER BY t.priority, {_WAITING_KEY}, t.id LIMIT k.take
) AS head
ORDER BY k.ord, head.id""")
# Whatever the status: a worker may claim (even finish) a task between its publish and this mark,
# and a claimed task left unmarked would be outside the window's count.
_MARK_DISPATCHED = text("UPDATE image_tasks SET queued_at = now() WHERE id = ANY(:ids) AND queued_at IS NULL")


class Unqueued(NamedTuple):
    id: int
    attempts: int
    # Its reprocess generation (core/reprocessing.py) and count of retries (core/task_controls.py),
    # parts of the message id.
    generation: int = 0
    retries: int = 0
    # The upload span's W3C traceparent, so the dispatcher's publish joins the task's trace.
    traceparent: str | None = None
    priority: Priority = DEFAULT_PRIORITY


@dataclass(frozen=True)
class InWindow:
    """The tasks published and not final yet, counted up to a cap."""

    by_priority: dict[Priority, int]
    by_owner: dict[str | None, int]

    @property
    def total(self) -> int:
        return sum(self.by_priority.values())


@_mapping_errors
async def lock_dispatch(session: AsyncSession) -> None:
    """Wait for the one dispatcher turn (across every API process), held until the transaction
    ends: counting the window and filling it must not interleave with another replica's."""
    await session.execute(_LOCK_DISPATCH, {"key": DISPATCH_LOCK_KEY})


@_mapping_errors
async def count_in_window(session: AsyncSession, cap: int) -> InWindow:
    """The tasks published and not final yet, by priority and by key; at most `cap` are counted
    (a total of `cap` means at least that many)."""
    by_priority = dict.fromkeys(Priority, 0)
    by_owner: dict[str | None, int] = {}
    for row in await session.execute(_COUNT_IN_WINDOW, {"cap": cap}):
        by_priority[Priority(row.priority)] += row.n
        by_owner[row.owner] = by_owner.get(row.owner, 0) + row.n
    return InWindow(by_priority, by_owner)


@_mapping_errors
async def next_waiting(
    session: AsyncSession,
    limit: int,
    in_window: Mapping[str | None, int] | None = None,
    *,
    young_seconds: float = 0,
) -> dict[Priority, list[Unqueued]]:
    """Up to `limit` waiting tasks of each priority, in the order they should be published (fair
    between keys given each key's tasks `in_window`, oldest first within a key; core/fair_order.py).
    With `young_seconds`, only tasks committed longer ago than that: younger ones are their own
    requests' to publish (api/dispatcher.py `queue_new`).

    Reads the keys that have tasks waiting and the heads of their queues only: a few statements
    of O(limit + keys) rows, whatever the backlog. `in_window` defaults to every task in the window
    (counted without a cap)."""
    if in_window is None:
        in_window = (await count_in_window(session, MAX_TASK_ID)).by_owner
    queues: dict[Priority, list[fair_order.KeyQueue[Unqueued]]] = {priority: [] for priority in Priority}
    for row in await session.execute(_WAITING_KEYS, {"young": young_seconds}):
        owner, priority = None if row.owner == _KEYLESS else row.owner, Priority(row.priority)
        head = Unqueued(row.id, row.attempts, row.generation, row.retries, row.traceparent, priority)
        queues[priority].append(fair_order.KeyQueue(owner, in_window.get(owner, 0), [head]))
    while reads := [
        (priority, queue, asked)
        for priority, keyed in queues.items()
        for queue, asked in fair_order.to_read(keyed, limit)
    ]:
        found: dict[int, list[Unqueued]] = {}
        params = {
            "priorities": [priority.value for priority, _, _ in reads],
            "owners": [_KEYLESS if queue.owner is None else queue.owner for _, queue, _ in reads],
            "after": [queue.rows[-1].id if queue.rows else 0 for _, queue, _ in reads],
            "take": [asked for _, _, asked in reads],
            "young": young_seconds,
        }
        for row in await session.execute(_QUEUE_HEADS, params):
            priority = reads[row.ord - 1][0]
            found.setdefault(row.ord, []).append(
                Unqueued(row.id, row.attempts, row.generation, row.retries, row.traceparent, priority)
            )
        for ord_, (_, queue, asked) in enumerate(reads, start=1):
            fair_order.read(queue, asked, found.get(ord_, []))
    return {priority: fair_order.first(keyed, limit) for priority, keyed in queues.items()}


@_mapping_errors
async def mark_queued_in(session: AsyncSession, task_ids: Sequence[int]) -> None:
    """Record, in the dispatcher's transaction, that these tasks are in JetStream."""
    await session.execute(_MARK_DISPATCHED, {"ids": list(task_ids)})


_MARK_QUEUED = "UPDATE image_tasks SET queued_at = now() WHERE id = ANY($1::integer[]) AND queued_at IS NULL"


@_mapping_errors
async def mark_queued(pool: asyncpg.Pool, task_ids: Sequence[int]) -> None:
    """Record that these tasks, published by the requests that made them, are in JetStream: one
    autocommit statement on the driver pool (api/queued_marks.py)."""
    async with pool.acquire(timeout=POOL_TIMEOUT_SECONDS) as connection:
        await connection.execute(_MARK_QUEUED, list(task_ids))


_FAIL_EXPIRED = text(
    f"UPDATE image_tasks SET status = 'failed', error = :reason, {_FINISHED}"
    f" WHERE {_LEASE_EXPIRED} AND attempts >= :max_attempts"
)
_REQUEUE_EXPIRED = text(
    f"UPDATE image_tasks SET status = 'pending', queued_at = NULL, leased_until = NULL WHERE {_LEASE_EXPIRED}"
)


@_mapping_errors
async def take_back_expired(session: AsyncSession, max_attempts: int) -> tuple[int, int]:
    """Rows whose lease ran out lost their worker: `failed` once they have had `max_attempts`,
    else back to `pending` and unqueued, for the relay to queue again. Returns (re-queued, failed)."""
    reason = INTERRUPTED_REASON.format(attempts=max_attempts)
    failed = await session.execute(_FAIL_EXPIRED, {"reason": reason, "max_attempts": max_attempts})
    requeued = await session.execute(_REQUEUE_EXPIRED)
    return getattr(requeued, "rowcount", 0) or 0, getattr(failed, "rowcount", 0) or 0


@_mapping_errors
async def unqueue_lost(session: AsyncSession, queued_before: timedelta) -> int:
    """Mark pending rows queued more than `queued_before` ago as unqueued again (their message is
    gone); how many."""
    result = await session.execute(
        update(ImageTask)
        .where(ImageTask.status == TaskStatus.PENDING, ImageTask.queued_at < func.now() - queued_before)
        .values(queued_at=None)
    )
    return getattr(result, "rowcount", 0) or 0


# ---- Callbacks (API) ----------------------------------------------------------------------------


@_mapping_errors
async def claim_due_callbacks(session: AsyncSession, *, limit: int, hold: timedelta) -> list[ImageTask]:
    """Claim up to `limit` callbacks due now and count their try: their due time moves `hold`
    forward (so no lock is held while the receiver answers, and a sender that dies hands them on).
    Commits; returns the claimed tasks."""
    due = (
        select(ImageTask.id)
        .where(ImageTask.callback_state == CallbackState.PENDING, ImageTask.callback_next_at <= func.now())
        .order_by(ImageTask.callback_next_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with session.begin():
        claimed = (
            await session.scalars(
                update(ImageTask)
                .where(ImageTask.id.in_(due))
                .values(
                    callback_next_at=func.now() + hold,
                    callback_attempts=ImageTask.callback_attempts + 1,
                )
                .returning(ImageTask.id)
            )
        ).all()
    if not claimed:
        return []
    return list(await session.scalars(select(ImageTask).where(ImageTask.id.in_(claimed))))


@_mapping_errors
async def record_callback(
    session: AsyncSession, task_id: int, *, error: str | None, retry_in: timedelta | None
) -> None:
    """The outcome of a try: delivered (`error` None), to try again in `retry_in`, or failed for
    good (`retry_in` None). Commits."""
    values: dict[str, Any]
    if error is None:
        values = {"callback_state": CallbackState.DELIVERED, "callback_error": None, "callback_next_at": None}
    elif retry_in is None:
        values = {"callback_state": CallbackState.FAILED, "callback_error": error, "callback_next_at": None}
    else:
        values = {"callback_next_at": func.now() + retry_in, "callback_error": error}
    async with session.begin():
        await session.execute(
            update(ImageTask)
            .where(ImageTask.id == task_id, ImageTask.callback_state == CallbackState.PENDING)
            .values(**values)
        )


# ---- Delete with files --------------------------------------------------------------------------


# Rows go first, committed, then their files: a crash between the two (or a file store outage)
# leaves files without rows (wasted space), never rows without files (tasks that cannot be shown).
# The store is checked first, as rows deleted while it is away would leave their files for good.


async def delete_task(session: AsyncSession, storage: Storage, task_id: int) -> bool:
    """Delete a task and its files (DELETE /tasks/{id}); False if there was no such row. A file
    store lost after the row went is logged: the task is gone either way."""
    if not storage.is_ready:
        raise StorageUnavailable(NOT_READY)
    rows = await _delete_rows(session, ImageTask.id == task_id)
    try:
        await _remove_files(storage, rows)
    except StorageUnavailable as exc:
        log.warning("task %s deleted, but its files could not be removed: %s", task_id, exc)
    return bool(rows)


async def delete_finished(
    session: AsyncSession, storage: Storage, *, older_than: timedelta, limit: int
) -> int:
    """Delete up to `limit` tasks finished more than `older_than` ago, and their files (retention).
    Rows another process is deleting are skipped. Returns how many."""
    if not storage.is_ready:
        raise StorageUnavailable(NOT_READY)
    expired = (
        select(ImageTask.id)
        .where(ImageTask.status.in_(FINAL_STATUSES), ImageTask.finished_at < func.now() - older_than)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = await _delete_rows(session, ImageTask.id.in_(expired))
    await _remove_files(storage, rows)
    return len(rows)


async def _remove_files(storage: Storage, rows: Sequence[Row[Any]]) -> None:
    await storage.remove(Area.UPLOADS, _ours([row.input_name for row in rows]))
    # A reprocessed task's old files too, while they await removal (core/reprocessing.py).
    # And the outputs a failed run made, kept for a retry of the failed ones (core/task_controls.py).
    outputs = [
        output
        for row in rows
        for output in (
            *(row.outputs or ()),
            *(row.superseded_outputs or ()),
            *((row.partial_outputs or {}).get("made") or ()),
        )
    ]
    await storage.remove(Area.PROCESSED, _ours(sorted({output["file"] for output in outputs})))


def _ours(names: list[str]) -> list[str]:
    """The names we generated. A row written past the API (a script, a restore) may name a file
    anything; such a name is not ours to resolve (it could point outside the folders), and the
    storage backends refuse it, which would fail a delete whose row is already gone."""
    kept = [name for name in names if is_stored_name(name)]
    if len(kept) != len(names):
        log.warning("not removing files with names we never generate: %s", sorted(set(names) - set(kept)))
    return kept


@_mapping_errors
async def _delete_rows(session: AsyncSession, which: Any) -> Sequence[Row[Any]]:
    result = await session.execute(
        delete(ImageTask)
        .where(which)
        .returning(
            ImageTask.input_name, ImageTask.outputs, ImageTask.superseded_outputs, ImageTask.partial_outputs
        )
    )
    rows = result.all()
    await session.commit()
    return rows
