"""One message, one task: claim the row, render the image, record the outcome, then settle the message.

Ack policy (JetStream delivers at least once, so every step is safe to repeat):

- ack:  the outcome is committed (`done`, or `failed` for good), or the row is already final
        (a redelivery after a lost ack: nothing is rendered or written twice).
- term: the message can never succeed (not a task id, no such row, an image that cannot be
        decoded); the row, where there is one, says `failed` with the reason.
- nak(delay): a passing fault (database down, disk error); JetStream offers it again after
        RETRY_DELAY_SECONDS. On the last delivery allowed (MAX_DELIVER) the task is marked
        `failed` instead, so nothing loops for ever.

While Pillow works (in a thread), `in_progress()` heartbeats keep JetStream from handing the
message to another worker; a worker killed mid-image stops them, and the message is redelivered
after ACK_WAIT_SECONDS. The output is written to a temporary file and renamed into place, and its
name derives from the task's input, so a second run replaces rather than adds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

from nats.aio.msg import Msg
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import DATABASE_UNAVAILABLE_ERRORS
from core.formats import EXTENSIONS, ImageRejected
from core.models import FINAL_STATUSES, ImageTask, TaskStatus
from core.queue import parse_task_id
from core.storage import Storage, move_into_place, output_name_for, remove_quietly
from worker.imaging import ProcessedImage, watermark

log = logging.getLogger(__name__)

INPUT_MISSING = "The uploaded file is no longer available, so it cannot be processed."
GAVE_UP = "Processing failed {attempts} times; giving up. Last error: {error}"

_OPEN = (TaskStatus.PENDING, TaskStatus.PROCESSING)


@dataclass(frozen=True)
class RenderSettings:
    watermark_text: str
    max_pixels: int
    max_frames: int


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
        ack_wait_seconds: float,
        max_deliver: int,
        retry_delay_seconds: float,
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._executor = executor
        self._render_settings = render
        self._heartbeat_seconds = max(ack_wait_seconds / 3, 0.5)
        self._max_deliver = max_deliver
        self._retry_delay = retry_delay_seconds

    async def handle(self, msg: Msg) -> None:
        """Process one message and settle it; never raises (a bug is logged and retried later)."""
        task_id = parse_task_id(msg.data)
        if task_id is None:
            log.error("terminating a message that is not a task id: %r", msg.data[:64])
            await msg.term()
            return
        try:
            await self._handle_task(msg, task_id)
        except DATABASE_UNAVAILABLE_ERRORS as exc:
            log.warning("task %s: database unavailable (%s); retrying later", task_id, exc)
            await _settle(msg.nak(delay=self._retry_delay))
        except Exception:
            log.exception("task %s: unexpected error; retrying in %.0f s", task_id, self._retry_delay)
            await _settle(msg.nak(delay=self._retry_delay))

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
        source = self._storage.upload_path(claim.input_name)
        if not source.is_file():
            await self._finish_failed(task_id, INPUT_MISSING)
            await msg.term()
            return
        try:
            result = await self._render_with_heartbeats(msg, claim)
        except ImageRejected as exc:
            log.info("task %s failed: %s", task_id, exc)
            await self._finish_failed(task_id, str(exc))
            await msg.term()
            return
        except DATABASE_UNAVAILABLE_ERRORS:
            raise
        except Exception as exc:
            if _delivery_count(msg) < self._max_deliver:
                raise
            log.exception("task %s: last delivery failed; marking it failed", task_id)
            await self._finish_failed(task_id, GAVE_UP.format(attempts=claim.attempts, error=exc))
            await msg.term()
            return
        await self._finish_done(task_id, result)
        await msg.ack()

    async def _claim(self, task_id: int) -> _Claim | None:
        """Mark an open task `processing` and count the attempt; None when it is missing or final."""
        async with self._sessions() as session, session.begin():
            row = (
                await session.execute(
                    update(ImageTask)
                    .where(ImageTask.id == task_id, ImageTask.status.in_(_OPEN))
                    .values(
                        status=TaskStatus.PROCESSING,
                        attempts=ImageTask.attempts + 1,
                        started_at=func.now(),
                        error=None,
                    )
                    .returning(ImageTask.input_name, ImageTask.attempts)
                )
            ).one_or_none()
        return None if row is None else _Claim(input_name=row.input_name, attempts=row.attempts)

    async def _status(self, task_id: int) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(select(ImageTask.status).where(ImageTask.id == task_id))

    async def _render_with_heartbeats(self, msg: Msg, claim: _Claim) -> tuple[str, ProcessedImage]:
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(self._render, claim.input_name)
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    def _render(self, input_name: str) -> tuple[str, ProcessedImage]:
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
        return output_name, result

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                await msg.in_progress()
            except Exception as exc:  # a lost heartbeat costs at worst a redelivery
                log.warning("in_progress heartbeat failed: %s", exc)

    async def _finish_done(self, task_id: int, rendered: tuple[str, ProcessedImage]) -> None:
        output_name, _ = rendered
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(ImageTask)
                .where(ImageTask.id == task_id, ImageTask.status.in_(_OPEN))
                .values(status=TaskStatus.DONE, output_name=output_name, finished_at=func.now(), error=None)
            )
        log.info("task %s done: %s", task_id, output_name)

    async def _finish_failed(self, task_id: int, reason: str) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(ImageTask)
                .where(ImageTask.id == task_id, ImageTask.status.not_in(FINAL_STATUSES))
                .values(status=TaskStatus.FAILED, error=reason, finished_at=func.now())
            )


def _delivery_count(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered
    except Exception:  # not a JetStream message (never in production)
        return 1


async def _settle(action) -> None:
    """Nak/ack may fail when NATS itself is down; then JetStream redelivers after ack_wait anyway."""
    try:
        await action
    except Exception as exc:
        log.warning("could not settle a message (it will be redelivered): %s", exc)
