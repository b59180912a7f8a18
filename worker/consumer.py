"""One message, one task: claim the row, render the image, record the outcome, then settle the message.

Ack policy (JetStream delivers at least once, so every step is safe to repeat):

- ack:  the outcome is committed (`done`, or `failed` for good), or the row is already final
        (a redelivery after a lost ack: nothing is rendered or written twice).
- term: the message can never succeed (not a task id, no such row, an image that cannot be
        decoded, a task out of attempts); the row, where there is one, says `failed` and why.
- nak(delay): a passing fault; JetStream offers the message again after RETRY_DELAY_SECONDS.
        A database outage costs no attempt (the claim never happened) and is retried for as long
        as it lasts. Any other failure counts one attempt (`attempts`, in the row), and the
        MAX_DELIVER-th failed attempt marks the task `failed`, so nothing loops for ever. Attempts
        live in the row rather than in JetStream's delivery count, which also counts deliveries
        that never reached the database, and stops redelivering silently.

Claiming a task leases it (`leased_until`). While Pillow works (in a thread), heartbeats renew the
lease and send `in_progress()`, so JetStream does not hand the message to another worker and the
API's lease sweep leaves the row alone. A worker killed mid-image stops both: the message comes back
after ACK_WAIT_SECONDS, or, if it is gone, the sweep re-queues the row once the lease expires. The
output is written to a temporary file and renamed into place, and its name derives from the task's
input, so a second run replaces rather than adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from nats.aio.msg import Msg
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import is_database_unavailable
from core.formats import EXTENSIONS, ImageRejected
from core.models import FINAL_STATUSES, INTERRUPTED_REASON, ImageTask, TaskStatus
from core.queue import parse_task_id
from core.storage import Storage, move_into_place, output_name_for, remove_quietly
from worker.imaging import watermark

log = logging.getLogger(__name__)

INPUT_MISSING = "The uploaded file is no longer available, so it cannot be processed."
GAVE_UP = "Processing failed {attempts} times; giving up. Last error: {error}"

_OPEN = (TaskStatus.PENDING, TaskStatus.PROCESSING)


class DatabaseUnavailable(Exception):
    """The database could not be reached for this step: retry later, at no attempt's cost."""


@dataclass(frozen=True)
class RenderSettings:
    watermark_text: str
    max_pixels: int
    max_frames: int


@dataclass(frozen=True)
class TaskPolicy:
    ack_wait_seconds: float
    max_attempts: int
    retry_delay_seconds: float
    lease_seconds: float


@dataclass(frozen=True)
class _Claim:
    input_name: str
    attempts: int


class TaskProcessor:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        executor: Executor,
        render: RenderSettings,
        policy: TaskPolicy,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._executor = executor
        self._render_settings = render
        self._policy = policy
        self._heartbeat_seconds = max(policy.ack_wait_seconds / 3, 0.5)
        self._lease = timedelta(seconds=policy.lease_seconds)

    async def handle(self, msg: Msg) -> None:
        """Process one message and settle it; never raises (a bug is logged and retried later)."""
        task_id = parse_task_id(msg.data)
        if task_id is None:
            log.error("terminating a message that is not a task id: %r", msg.data[:64])
            await _settle(msg.term())
            return
        try:
            await self._handle_task(msg, task_id)
        except DatabaseUnavailable as exc:
            log.warning("task %s: database unavailable (%s); retrying later", task_id, exc)
            await _settle(msg.nak(delay=self._policy.retry_delay_seconds))
        except Exception:
            log.exception("task %s: unexpected error; retrying later", task_id)
            await _settle(msg.nak(delay=self._policy.retry_delay_seconds))

    async def _handle_task(self, msg: Msg, task_id: int) -> None:
        claim = await self._claim(task_id)
        if claim is None:
            status = await self._status(task_id)
            if status is None:
                log.error("task %s: no such row; terminating its message", task_id)
                await msg.term()
            else:
                log.info("task %s is already %s; acknowledging a redelivery", task_id, status)
                await msg.ack()
            return
        max_attempts = self._policy.max_attempts
        if claim.attempts > max_attempts:
            # Every earlier attempt ended with its worker gone (killed, out of memory): stop here.
            await self._finish_failed(task_id, INTERRUPTED_REASON.format(attempts=max_attempts))
            await msg.term()
            return
        if not self._storage.upload_path(claim.input_name).is_file():
            await self._finish_failed(task_id, INPUT_MISSING)
            await msg.term()
            return
        try:
            output_name = await self._render_with_heartbeats(msg, task_id, claim)
        except ImageRejected as exc:
            log.info("task %s failed: %s", task_id, exc)
            await self._finish_failed(task_id, str(exc))
            await msg.term()
            return
        except Exception as exc:
            if claim.attempts < max_attempts:
                log.warning("task %s: attempt %d failed (%s); retrying later", task_id, claim.attempts, exc)
                await self._release(task_id)
                await msg.nak(delay=self._policy.retry_delay_seconds)
                return
            log.exception(
                "task %s: attempt %d of %d failed; marking it failed", task_id, claim.attempts, max_attempts
            )
            await self._finish_failed(task_id, GAVE_UP.format(attempts=claim.attempts, error=_describe(exc)))
            await msg.term()
            return
        await self._finish_done(task_id, output_name)
        await msg.ack()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        """A database transaction whose connection faults become DatabaseUnavailable."""
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except Exception as exc:
            if is_database_unavailable(exc):
                raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
            raise

    async def _claim(self, task_id: int) -> _Claim | None:
        """Mark an open task `processing`, count the attempt and lease it; None if missing or final."""
        async with self._transaction() as session:
            row = (
                await session.execute(
                    update(ImageTask)
                    .where(ImageTask.id == task_id, ImageTask.status.in_(_OPEN))
                    .values(
                        status=TaskStatus.PROCESSING,
                        attempts=ImageTask.attempts + 1,
                        started_at=func.now(),
                        leased_until=func.now() + self._lease,
                        error=None,
                    )
                    .returning(ImageTask.input_name, ImageTask.attempts)
                )
            ).one_or_none()
        return None if row is None else _Claim(input_name=row.input_name, attempts=row.attempts)

    async def _status(self, task_id: int) -> str | None:
        async with self._transaction() as session:
            return await session.scalar(select(ImageTask.status).where(ImageTask.id == task_id))

    async def _render_with_heartbeats(self, msg: Msg, task_id: int, claim: _Claim) -> str:
        heartbeat = asyncio.create_task(self._heartbeat(msg, task_id))
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(self._render, claim.input_name)
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    def _render(self, input_name: str) -> str:
        """Runs in a worker thread: decode, stamp, write to a temporary file, rename into place."""
        settings = self._render_settings
        temp = self._storage.temp_processed_path()
        try:
            result = watermark(
                self._storage.upload_path(input_name),
                temp,
                text=settings.watermark_text,
                max_pixels=settings.max_pixels,
                max_frames=settings.max_frames,
            )
            output_name = output_name_for(input_name, EXTENSIONS[result.format])
            move_into_place(temp, self._storage.processed_path(output_name))
        finally:
            remove_quietly(temp)
        return output_name

    async def _heartbeat(self, msg: Msg, task_id: int) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            # A lost heartbeat costs at worst a redelivery or a re-queue, both harmless: it must
            # never end the loop, nor turn a good render into a failed attempt.
            await _settle(msg.in_progress())
            try:
                async with self._transaction() as session:
                    await session.execute(
                        update(ImageTask)
                        .where(ImageTask.id == task_id, ImageTask.status == TaskStatus.PROCESSING)
                        .values(leased_until=func.now() + self._lease)
                    )
            except Exception as exc:
                log.warning("task %s: lease renewal failed: %s", task_id, exc)

    async def _release(self, task_id: int) -> None:
        """After a failed attempt: back to `pending` until the message comes round again."""
        async with self._transaction() as session:
            await session.execute(
                update(ImageTask)
                .where(ImageTask.id == task_id, ImageTask.status == TaskStatus.PROCESSING)
                .values(status=TaskStatus.PENDING, leased_until=None)
            )

    async def _finish_done(self, task_id: int, output_name: str) -> None:
        async with self._transaction() as session:
            result = await session.execute(
                update(ImageTask)
                .where(ImageTask.id == task_id, ImageTask.status.in_(_OPEN))
                .values(
                    status=TaskStatus.DONE,
                    output_name=output_name,
                    finished_at=func.now(),
                    leased_until=None,
                    error=None,
                )
            )
        if result.rowcount == 0:
            log.warning("task %s was finished elsewhere meanwhile; its output is the same file", task_id)
        else:
            log.info("task %s done: %s", task_id, output_name)

    async def _finish_failed(self, task_id: int, reason: str) -> None:
        async with self._transaction() as session:
            await session.execute(
                update(ImageTask)
                .where(ImageTask.id == task_id, ImageTask.status.not_in(FINAL_STATUSES))
                .values(status=TaskStatus.FAILED, error=reason, finished_at=func.now(), leased_until=None)
            )


def _describe(exc: BaseException) -> str:
    """An error for people: what went wrong, without server paths or stack details."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


async def _settle(action: Awaitable[None]) -> None:
    """Ack/nak/term/in_progress may fail when NATS is down; JetStream then redelivers after ack_wait."""
    try:
        await action
    except Exception as exc:
        log.warning("could not settle a message (it will be redelivered): %s", exc)
