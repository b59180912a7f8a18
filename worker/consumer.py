"""One message, one task: claim the row, render the image, record the outcome, then settle the message.

Ack policy (JetStream delivers at least once, so every step is safe to repeat):

- ack:  the outcome is committed (`done`, or `failed` for good), or the row is already final
        (a redelivery after a lost ack: nothing is rendered or written twice; a `cancelled` task
        that was still pending is never rendered).
- term: the message can never succeed (not a task id, no such row, an image that cannot be
        decoded, a task out of attempts); the row, where there is one, says `failed` and why.
- nak(delay): a passing fault; JetStream offers the message again after RETRY_DELAY_SECONDS.
        A database outage costs no attempt (the claim never happened) and is retried for as long
        as it lasts; so does a file store outage (nats backend: the claim is given back), and so
        does a full output volume (ENOSPC, EDQUOT: the claim is given back), and a heavy task
        that finds this worker's heavy lane taken (it waits in the queue, not in a fetch slot). Any
        other failure counts one attempt (`attempts`, in the row), and the MAX_ATTEMPTS-th failed
        attempt marks the task `failed`, so nothing loops for ever. Attempts live in the row
        rather than in JetStream's delivery count, which also counts deliveries that never
        reached the database, and stops redelivering silently.

Claiming a task leases it (`leased_until`). While Pillow works (in a thread), heartbeats renew the
lease and send `in_progress()`, so JetStream does not hand the message to another worker and the
API's lease sweep leaves the row alone. A worker killed mid-image stops both: the message comes back
after ACK_WAIT_SECONDS, or, if it is gone, the sweep re-queues the row once the lease expires. Each
output is rendered to a temporary file and then stored (renamed into place, or put in the object
store, whole or not at all), and its name derives from the task's input, so a second run replaces
rather than adds.

Cancel (core/task_controls.py) reaches a running render through the lease: the next heartbeat's
renewal finds the row no longer `processing`. A heavy render's process is then killed and the
outputs it may have put in place removed; a light one (short, in a thread, not stoppable) ends, and
its outputs are removed instead of recorded, as the finish finds the row `cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.msg import Msg

from core import tasks, tracing
from core.db import DriverPool
from core.formats import CONTENT_TYPES, EXTENSIONS, ImageRejected, probe_image
from core.logs import task_context
from core.models import INTERRUPTED_REASON, Priority, TaskStatus
from core.processing.cost import ANIMATED_OUTPUT_FORMATS, render_pixels
from core.processing.outputs import Processing
from core.queue import DURABLE, parse_task_id
from core.storage import (
    Area,
    Storage,
    StorageUnavailable,
    StoredFileMissing,
    output_name_for,
    remove_quietly,
)
from worker.metrics import WorkerMetrics
from worker.placeholder import Placeholder
from worker.pool import RenderInterrupted, RenderPool, RenderTimedOut
from worker.render_job import RenderedOutput, RenderedTask, RenderSettings, render_task, temp_paths

log = logging.getLogger(__name__)

T = TypeVar("T")

INPUT_MISSING = "The uploaded file is no longer available, so it cannot be processed."
GAVE_UP = "Processing failed {attempts} times; giving up. Last error: {error}"
PARTLY_FAILED = (
    "{count} of {total} outputs could not be made ({details}); the others were made and are kept, "
    "so a retry of the failed outputs only (outputs=failed) makes just these."
)
TOO_SLOW = (
    "Processing took longer than {seconds:g} s (RENDER_TIMEOUT_SECONDS) and was stopped; it would be "
    "as slow again. Ask for fewer or cheaper operations, or a smaller image."
)

FORMATS_BY_CONTENT_TYPE = {content_type: name for name, content_type in CONTENT_TYPES.items()}

# How often recording a finished output is retried in place before the message is given back.
FINISH_RETRIES = 10
# A render still going this long after it reported the placeholder gets it written at once (one
# UPDATE); a quicker one leaves it to the statement that marks the task done. Pages follow a task
# every 0.3 s (api/routes/events.py), so a shorter wait would rarely show it sooner, and most
# renders (a 12 MP thumbnail takes 25 ms) then cost no extra round trip.
PLACEHOLDER_WRITE_DELAY_SECONDS = 0.1
# The largest render the urgent lane takes, as a share of HEAVY_RENDER_PIXELS: a light render at the
# full threshold (a 33 MP photo blurred) peaked at 380 MB, a third of the worker's 1 GiB limit in
# deploy/k8s, and the regular lanes and the heavy one may hold theirs meanwhile; a quarter keeps the
# extra lane's memory under 100 MB (tests/worker/test_lane_memory.py). Interactive uploads are small
# (a 12 MP photo's thumbnail, web or avatar render is 12-21 M pixel-steps); a larger one waits for a
# regular lane, as it did before the urgent lane existed.
URGENT_RENDER_SHARE = 0.25
# Longest a worker holds a task it is rendering; far beyond any image within MAX_IMAGE_PIXELS.
RENDER_DEADLINE_SECONDS = 600


@dataclass(frozen=True)
class TaskPolicy:
    ack_wait_seconds: float
    max_attempts: int
    retry_delay_seconds: float
    # A render estimated above this many pixels (core.processing.cost.render_pixels) is heavy: it
    # runs in a child process of its own, killed past render_timeout_seconds, one at a time.
    heavy_render_pixels: int
    render_timeout_seconds: float


@dataclass(frozen=True)
class _Claim:
    input_name: str
    attempts: int
    processing: Processing
    width: int
    height: int
    input_format: str
    # The claim's mark in the row, by which it renews and finishes the task.
    started_at: datetime
    # Whether an earlier attempt recorded the task's placeholder.
    has_placeholder: bool = False
    # Outputs an earlier, failed run made and this one keeps (a retry of the failed outputs only).
    kept: tuple[dict[str, Any], ...] = ()
    # An interactive task's light render may take the urgent lane (worker/lanes.py).
    urgent: bool = False
    claimed_at: float = field(default_factory=time.monotonic)

    @property
    def kept_names(self) -> frozenset[str]:
        return frozenset(record["name"] for record in self.kept)


class _Lease:
    """Whether this worker still holds the task: the heartbeat says when it has lost it."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        # True: the row is no longer this claim's (claimed again elsewhere, finished, deleted);
        # False: the lease ran out before it could be renewed (database trouble).
        self.taken = False

    def lose(self, *, taken: bool) -> None:
        self.taken = taken
        self.lost.set()


class _PlaceholderWrite:
    """Records the placeholder a render reports (on its first decode) while the render goes on,
    so that pages show it before the outputs are ready; the task's finish waits for it.

    Not at once: a render that ends within PLACEHOLDER_WRITE_DELAY_SECONDS leaves it to the finish,
    which records it in the statement that marks the task done (no round trip of its own, on the
    drain's hot path). A failed write costs nothing but the early look: the finish records it then.
    """

    def __init__(self, driver_pool: DriverPool, task_id: int, claim: _Claim) -> None:
        self._driver_pool = driver_pool
        self._task_id = task_id
        self._started_at = claim.started_at
        self._wanted = not claim.has_placeholder
        self._due: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[bool] | None = None
        self._reported: Placeholder | None = None

    def report(self, placeholder: Placeholder) -> None:
        """Called on the event loop (worker.pool) as soon as the render has it."""
        self._reported = placeholder
        if self._wanted and self._due is None:
            self._due = asyncio.get_running_loop().call_later(
                PLACEHOLDER_WRITE_DELAY_SECONDS, self._start, placeholder
            )

    def _start(self, placeholder: Placeholder) -> None:
        self._writing = asyncio.create_task(self._write(placeholder))

    async def _write(self, placeholder: Placeholder) -> bool:
        try:
            await tasks.record_placeholder(self._driver_pool, self._task_id, placeholder, self._started_at)
        except Exception as exc:
            log.warning("task %s: placeholder not recorded yet (%s)", self._task_id, exc)
            return False
        return True

    async def left_over(self, placeholder: Placeholder | None) -> Placeholder | None:
        """Once the render has ended: the placeholder the finish should record, if it was not
        recorded already (a quick render, a pool of processes, which cannot report while
        rendering, or a failed write)."""
        if not self._wanted:
            return None
        if self._due is not None:
            self._due.cancel()
        if self._writing is not None and await self._writing:
            return None
        return placeholder

    async def before_failing(self) -> None:
        """The render failed after the input decoded: record the placeholder it reported now, if
        it is not recorded yet, so that a failed task has one however quickly it failed."""
        if not self._wanted or self._reported is None:
            return
        if self._due is not None:
            self._due.cancel()
        if self._writing is None:
            self._writing = asyncio.create_task(self._write(self._reported))
        await asyncio.wait({self._writing})

    async def settle(self) -> None:
        """Nothing outlives the attempt: a write not started is dropped, one in flight ends."""
        if self._due is not None:
            self._due.cancel()
        if self._writing is not None:
            await asyncio.wait({self._writing})


class _LeaseLost(Exception):
    """The render was abandoned: the task is no longer this worker's."""


class _HeavyLaneBusy(Exception):
    """Another heavy render holds this worker's heavy lane: the task waits in the queue instead."""


class TaskProcessor:
    def __init__(
        self,
        *,
        driver_pool: DriverPool,
        storage: Storage,
        pool: RenderPool,
        metrics: WorkerMetrics,
        render: RenderSettings,
        policy: TaskPolicy,
    ) -> None:
        self._driver_pool = driver_pool
        self._storage = storage
        self._pool = pool
        self._metrics = metrics
        self._render_settings = render
        self._output_placer = storage.output_placer()
        self._policy = policy
        self._heartbeat_seconds = max(policy.ack_wait_seconds / 3, 0.5)
        self._lease = tasks.lease_length(policy.ack_wait_seconds)
        # Heavy renders take turns, so they never hold more than one render's worth of memory and
        # CPU beside the light ones (which keep the pool's slots). A lock, not a queue: a heavy task
        # that finds it taken goes back to JetStream rather than wait holding a fetch slot.
        self._heavy_lane = asyncio.Lock()
        # Monotonic time before which the fetch loop should not take new messages (database down,
        # or no space left for outputs).
        self.paused_until = 0.0

    async def handle(self, msg: Msg) -> None:
        """Process one message and settle it; never raises (a bug is logged and retried later)."""
        task_id = parse_task_id(msg.data)
        if task_id is None:
            log.error("terminating a message that is not a task id: %r", msg.data[:64])
            await _settle(msg.term())
            return
        with task_context(task_id), tracing.processing(msg, task_id, consumer_group=DURABLE):
            await self._handle_with_policy(msg, task_id)

    async def _handle_with_policy(self, msg: Msg, task_id: int) -> None:
        try:
            await self._handle_task(msg, task_id)
        except tasks.DatabaseUnavailable as exc:
            # Tell the fetch loop to pause, so a backlog is not cycled through a recovering database.
            self.paused_until = time.monotonic() + self._policy.retry_delay_seconds
            log.warning("task %s: database unavailable (%s); retrying later", task_id, exc)
            await _settle(msg.nak(delay=self._policy.retry_delay_seconds))
        except Exception:
            log.exception("task %s: unexpected error; retrying later", task_id)
            await _settle(msg.nak(delay=self._policy.retry_delay_seconds))

    async def _handle_task(self, msg: Msg, task_id: int) -> None:
        with tracing.span("claim"):
            claim = await self._claim(task_id)
        if claim is not None:
            tracing.annotate(imagequeue__attempt=claim.attempts)
        if claim is None:
            status = await self._status(task_id)
            if status is None:
                log.error("task %s: no such row; terminating its message", task_id)
                await msg.term()
            elif status == TaskStatus.PROCESSING:
                # Another live worker holds the lease (its heartbeats to JetStream were late, or a
                # copy of the message was re-queued): come back once that lease could have expired.
                log.info("task %s is being processed elsewhere; looking again later", task_id)
                await msg.nak(delay=self._lease.total_seconds())
            else:
                log.info("task %s is already %s; acknowledging a redelivery", task_id, status)
                await msg.ack()
            return
        max_attempts = self._policy.max_attempts
        if claim.attempts > max_attempts:
            # Every earlier attempt ended with its worker gone (killed, out of memory): stop here.
            await self._finish_failed(task_id, INTERRUPTED_REASON.format(attempts=max_attempts), claim)
            await msg.term()
            return
        lease = _Lease()
        heartbeat = asyncio.create_task(self._heartbeat(msg, task_id, claim, lease))
        try:
            await self._render_and_finish(msg, task_id, claim, lease)
        except StorageUnavailable as exc:
            # The store (NATS) is away: a passing fault like a database outage, so it costs no attempt.
            log.warning("task %s: file store unavailable (%s); retrying later", task_id, exc)
            await self._give_back(task_id, claim)
            await msg.nak(delay=self._policy.retry_delay_seconds)
        except OSError as exc:
            if not _is_disk_full(exc):
                raise
            # No room for the output: the volume's fault, not the task's, and every task would meet
            # it. Like a database outage: no attempt counted, and no new message for a while.
            log.warning("task %s: no space for its output (%s); handing it back", task_id, _describe(exc))
            self.paused_until = time.monotonic() + self._policy.retry_delay_seconds
            await self._give_back(task_id, claim)
            await msg.nak(delay=self._policy.retry_delay_seconds)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _render_and_finish(self, msg: Msg, task_id: int, claim: _Claim, lease: _Lease) -> None:
        placeholder = _PlaceholderWrite(self._driver_pool, task_id, claim)
        try:
            try:
                fetching = self._storage.local_upload_path(claim.input_name)
                async with tracing.entering("fetch input", fetching) as source:
                    with tracing.span("render"):
                        rendered = await self._render(msg, task_id, claim, source, lease, placeholder)
                        if rendered is not None:  # its decode, ops, encodes, as the job recorded them
                            tracing.replay(rendered.steps)
            except StoredFileMissing:
                await self._finish_failed(task_id, INPUT_MISSING, claim)
                await msg.term()
                return
            if rendered is None:  # the attempt ended (failed, or given back)
                return
            if rendered.failures:
                await self._finish_partly(msg, task_id, claim, rendered, placeholder)
                return
            outputs = _in_order(claim.processing, [*claim.kept, *await self._keep_outputs(rendered.outputs)])
            left_over = await placeholder.left_over(rendered.placeholder)
            with tracing.span("finish"):
                recorded = await self._finish_done_patiently(task_id, outputs, claim, left_over)
            if recorded is not None:
                self._record(claim, recorded)
            await msg.ack()
        finally:
            await placeholder.settle()

    async def _finish_partly(
        self, msg: Msg, task_id: int, claim: _Claim, rendered: RenderedTask, placeholder: _PlaceholderWrite
    ) -> None:
        """Some outputs were made (or kept from before) and some failed. An error that might pass
        (not the image's or the ops' fault) with attempts left: the attempt failed, nothing of it
        stays. Otherwise the task fails, recording what was made, so a retry of the failed outputs
        only keeps it."""
        might_pass = any(not failure.final for failure in rendered.failures)
        if might_pass and claim.attempts < self._policy.max_attempts:
            errors = ", ".join(f"{failure.name}: {failure.error}" for failure in rendered.failures)
            log.warning("task %s: attempt %d failed (%s); retrying later", task_id, claim.attempts, errors)
            await self._discard(rendered.outputs)
            await self._release(task_id, claim)
            await msg.nak(delay=self._policy.retry_delay_seconds)
            return
        made_now = await self._keep_outputs(rendered.outputs)
        made = _in_order(claim.processing, [*claim.kept, *made_now])
        failed = [
            {
                "name": failure.name,
                "error": failure.error
                if failure.final
                else GAVE_UP.format(attempts=claim.attempts, error=failure.error),
            }
            for failure in rendered.failures
        ]
        reason = PARTLY_FAILED.format(
            count=len(failed),
            total=len(claim.processing.outputs),
            details="; ".join(f"{item['name']}: {item['error']}" for item in failed),
        )
        log.info("task %s failed: %s", task_id, reason)
        partial = {"generation": claim.processing.generation, "made": made, "failed": failed}
        await placeholder.before_failing()
        if not await self._finish_failed(task_id, reason, claim, partial):
            await self._remove_if_cancelled(
                task_id, claim.processing.generation, [record["file"] for record in made_now]
            )
        await msg.term()

    async def _discard(self, rendered: list[RenderedOutput]) -> None:
        """Remove what a failed attempt made: its temporary files, or the files it put in place."""
        for output in rendered:
            if output.temp is not None:
                remove_quietly(output.temp)
        placed = [output.record["file"] for output in rendered if output.temp is None]
        await self._storage.remove(Area.PROCESSED, placed)

    async def _keep_outputs(self, rendered: list[RenderedOutput]) -> list[dict[str, Any]]:
        """Store each output the render job did not store itself; on failure leave no temporary
        file."""
        waiting = [(output.temp, output.record) for output in rendered if output.temp is not None]
        kept = 0  # a kept output's temporary file is gone (moved, or stored and deleted)
        try:
            for temp, record in waiting:
                with tracing.span("store output", attributes={tracing.OUTPUT: record["name"]}):
                    await self._storage.keep_output(temp, record["file"])
                kept += 1
        finally:
            for temp, _ in waiting[kept:]:
                remove_quietly(temp)
        return [output.record for output in rendered]

    async def _render(
        self,
        msg: Msg,
        task_id: int,
        claim: _Claim,
        source: Path,
        lease: _Lease,
        placeholder: _PlaceholderWrite,
    ) -> RenderedTask | None:
        """Render every output to a temporary file; None when the attempt ended here (the task is
        failed, released for another attempt, or no longer ours) and the message is settled."""
        max_attempts = self._policy.max_attempts
        try:
            return await self._render_in_lane(task_id, claim, source, lease, placeholder)
        except _HeavyLaneBusy:
            # Waiting here would hold a message (a fetch slot) that a light task could use, and
            # keep the task from an idle worker: back to the queue, at no attempt's cost.
            log.info("task %s: heavy, and a heavy render is running; back to the queue", task_id)
            await self._give_back(task_id, claim)
            await msg.nak(delay=self._policy.retry_delay_seconds)
            return None
        except _LeaseLost:
            if lease.taken:
                # Another worker holds the task now (or it is finished, cancelled or deleted): its
                # outcome is that worker's to record, and nothing of this attempt is.
                if await self._status(task_id) == TaskStatus.CANCELLED:
                    await self._remove_cancelled(task_id, claim)
                else:
                    log.warning("task %s: lease lost to another claim; render abandoned", task_id)
                await msg.ack()
            else:
                log.warning("task %s: lease ran out unrenewed; render abandoned, retrying later", task_id)
                await msg.nak(delay=self._policy.retry_delay_seconds)
            return None
        except RenderTimedOut as exc:
            # As slow at every attempt: fail now, saying so, rather than burn MAX_ATTEMPTS.
            reason = TOO_SLOW.format(seconds=exc.seconds)
            log.warning("task %s failed: %s", task_id, reason)
            await placeholder.before_failing()
            await self._finish_failed(task_id, reason, claim)
            await msg.term()
            return None
        except ImageRejected as exc:
            log.info("task %s failed: %s", task_id, exc)
            await placeholder.before_failing()
            await self._finish_failed(task_id, str(exc), claim)
            await msg.term()
            return None
        except Exception as exc:
            if _is_disk_full(exc):
                raise  # handed back by _handle_task
            if claim.attempts < max_attempts:
                log.warning("task %s: attempt %d failed (%s); retrying later", task_id, claim.attempts, exc)
                await self._release(task_id, claim)
                await msg.nak(delay=self._policy.retry_delay_seconds)
                return None
            log.exception(
                "task %s: attempt %d of %d failed; marking it failed", task_id, claim.attempts, max_attempts
            )
            reason = (
                INTERRUPTED_REASON.format(attempts=max_attempts)
                if isinstance(exc, RenderInterrupted)
                else GAVE_UP.format(attempts=claim.attempts, error=_describe(exc))
            )
            await placeholder.before_failing()
            await self._finish_failed(task_id, reason, claim)
            await msg.term()
            return None

    async def _render_in_lane(
        self, task_id: int, claim: _Claim, source: Path, lease: _Lease, placeholder: _PlaceholderWrite
    ) -> RenderedTask:
        """A light render in the pool, in a lane (an interactive one may take the urgent lane); a
        heavy one in its own process, abandoned (killed) if the lease is lost meanwhile. A light
        render cannot be stopped and is short: it ends, and finishing it records nothing once the
        task is no longer this claim's (_finish_done)."""
        cost = await self._render_cost(claim, source)
        threshold = self._policy.heavy_render_pixels
        if cost <= threshold:
            return await self._pool.run(
                render_task,
                *self._render_args(claim, source),
                None,
                claim.kept_names,
                report=placeholder.report,
                urgent=claim.urgent and cost <= threshold * URGENT_RENDER_SHARE,
            )
        return await _unless_lost(lease, self._render_heavy(task_id, claim, source, placeholder))

    def _render_args(self, claim: _Claim, source: Path) -> tuple[Any, ...]:
        """render_task's arguments for this claim, in a thread or a child process alike."""
        return (
            self._storage.folders,
            self._render_settings,
            source,
            claim.input_name,
            claim.processing,
            self._output_placer,
        )

    async def _render_cost(self, claim: _Claim, source: Path) -> int:
        """The render's estimated pixel-steps (core.processing.cost.render_pixels), which say
        whether it is heavy (over HEAVY_RENDER_PIXELS: a killable process of its own) and whether it
        may take the urgent lane. From the row's size; for an image that could be animated, with
        the most frames it could have, or, where that would make it heavy, with the count of frames
        read from its header."""
        threshold = self._policy.heavy_render_pixels
        estimate = functools.partial(
            render_pixels, claim.processing, claim.width, claim.height, input_format=claim.input_format
        )
        cost = estimate(frames=1)
        if cost > threshold or claim.input_format not in ANIMATED_OUTPUT_FORMATS:
            return cost
        limits = self._render_settings.limits
        most_frames = min(limits.max_frames, max(1, limits.max_pixels // max(1, claim.width * claim.height)))
        cost = estimate(frames=most_frames)
        if cost <= threshold:
            return cost
        info = await asyncio.to_thread(
            probe_image, source, max_pixels=limits.max_pixels, max_frames=limits.max_frames
        )
        return estimate(frames=info.frames)

    async def _render_heavy(
        self, task_id: int, claim: _Claim, source: Path, placeholder: _PlaceholderWrite
    ) -> RenderedTask:
        """Render in a child process of its own, one heavy render at a time (_HeavyLaneBusy while
        another runs), killed at its deadline (or when this coroutine is cancelled); its temporary
        files are removed here, since a killed child cannot."""
        if self._heavy_lane.locked():
            raise _HeavyLaneBusy
        async with self._heavy_lane:
            log.info("task %s: heavy render, in a process of its own", task_id)
            temps = temp_paths(self._storage.folders, claim.processing)
            try:
                return await self._pool.run_killable(
                    self._policy.render_timeout_seconds,
                    render_task,
                    *self._render_args(claim, source),
                    temps,
                    claim.kept_names,
                    report=placeholder.report,
                )
            except BaseException:
                for temp in temps:
                    remove_quietly(temp)
                raise

    def _record(self, claim: _Claim, status: TaskStatus) -> None:
        self._metrics.task_finished(
            status=status.value, preset=claim.processing.label(), seconds=time.monotonic() - claim.claimed_at
        )

    async def _finish_done_patiently(
        self, task_id: int, outputs: list[dict[str, Any]], claim: _Claim, placeholder: Placeholder | None
    ) -> TaskStatus | None:
        """Record the finished output, riding out a short database outage: the work is done and
        the heartbeats still hold the message, so giving up now would only cost a re-render.
        The final status this attempt ended in (None: another worker's, or the task is gone)."""
        for remaining in range(FINISH_RETRIES, -1, -1):
            try:
                return await self._finish_done(task_id, outputs, claim, placeholder)
            except tasks.DatabaseUnavailable as exc:
                if remaining == 0:
                    raise
                log.warning("task %s: cannot record its output yet (%s); retrying", task_id, exc)
                await asyncio.sleep(self._policy.retry_delay_seconds)
        raise AssertionError("unreachable: the last try raises")

    async def _claim(self, task_id: int) -> _Claim | None:
        """The task, now ours; None if it is missing, final or leased elsewhere."""
        claim = await tasks.claim(self._driver_pool, task_id, self._lease)
        if claim is None:
            return None
        processing = Processing.from_json(claim.processing)
        return _Claim(
            input_name=claim.input_name,
            attempts=claim.attempts,
            processing=processing,
            width=claim.width,
            height=claim.height,
            input_format=FORMATS_BY_CONTENT_TYPE.get(claim.content_type, ""),
            started_at=claim.started_at,
            has_placeholder=claim.has_placeholder,
            kept=_kept_outputs(claim.partial_outputs, processing),
            urgent=claim.priority is Priority.INTERACTIVE,
        )

    async def _status(self, task_id: int) -> str | None:
        return await tasks.status_of(self._driver_pool, task_id)

    async def _heartbeat(self, msg: Msg, task_id: int, claim: _Claim, lease: _Lease) -> None:
        """Keep the message (JetStream) and the lease (database) while this worker works on it.

        A failed beat costs at worst a redelivery that the lease turns away: it must never end the
        loop nor fail a good render. Each renewal is bounded by one beat, so a stalled database
        cannot delay the next `in_progress`. Past RENDER_DEADLINE_SECONDS the beats stop, so a
        render that never ends lets the task go to another attempt instead of holding it for ever.

        The lease is lost when a renewal finds the row no longer this claim's (a worker paused past
        its lease, whose task another worker claimed), or when no renewal succeeded for a whole
        lease: then `lease` says so, and the render is abandoned rather than finished for nothing.
        """
        deadline = time.monotonic() + RENDER_DEADLINE_SECONDS
        renewed_at = time.monotonic()
        lease_seconds = self._lease.total_seconds()
        while time.monotonic() < deadline:
            await asyncio.sleep(self._heartbeat_seconds)
            await _settle(msg.in_progress())
            asked_at = time.monotonic()
            try:
                async with asyncio.timeout(self._heartbeat_seconds):
                    renewed = await tasks.renew_lease(
                        self._driver_pool, task_id, self._lease, claim.started_at
                    )
            except Exception as exc:
                log.warning("task %s: lease renewal failed: %s", task_id, exc)
                if time.monotonic() - renewed_at > lease_seconds:
                    lease.lose(taken=False)
                    return
                continue
            if not renewed:
                log.warning("task %s: no longer processing here (finished or taken over)", task_id)
                lease.lose(taken=True)
                return
            renewed_at = asked_at
        log.error(
            "task %s: still rendering after %d s; letting the task go", task_id, RENDER_DEADLINE_SECONDS
        )

    async def _release(self, task_id: int, claim: _Claim) -> None:
        await tasks.release(self._driver_pool, task_id, claim.started_at)

    async def _give_back(self, task_id: int, claim: _Claim) -> None:
        await tasks.give_back(self._driver_pool, task_id, claim.started_at)

    async def _finish_done(
        self, task_id: int, outputs: list[dict[str, Any]], claim: _Claim, placeholder: Placeholder | None
    ) -> TaskStatus | None:
        files = [output["file"] for output in outputs]
        # Kept from an earlier run: not this attempt's to remove (a delete removes them itself).
        made_here = sorted(set(files) - {record["file"] for record in claim.kept})
        if await tasks.finish_done(self._driver_pool, task_id, outputs, claim.started_at, placeholder):
            log.info("task %s done: %s", task_id, ", ".join(files))
            return TaskStatus.DONE
        status = await self._status(task_id)
        if status is None:
            # Deleted (DELETE /tasks/{id}) while it was being processed: leave nothing behind.
            await self._storage.remove(Area.PROCESSED, made_here)
            log.info("task %s was deleted meanwhile; its output is removed", task_id)
        elif status == TaskStatus.CANCELLED:
            # Cancelled by its owner while a light render (which cannot be stopped) ran: the cancel
            # holds, and nothing it made stays.
            await self._storage.remove(Area.PROCESSED, made_here)
            log.info("task %s was cancelled meanwhile; its outputs are removed", task_id)
            return TaskStatus.CANCELLED
        elif await tasks.generation_of(self._driver_pool, task_id) != claim.processing.generation:
            # Reprocessed meanwhile (after a cancel): the new generation's files have other names,
            # and nothing refers to these.
            await self._storage.remove(Area.PROCESSED, made_here)
            log.info("task %s was reprocessed meanwhile; this run's outputs are removed", task_id)
        else:
            log.warning("task %s was finished elsewhere meanwhile; its outputs are the same files", task_id)
        return None

    async def _remove_cancelled(self, task_id: int, claim: _Claim) -> None:
        """A heavy render stopped because its task was cancelled: remove whatever outputs its
        process had put in place before it was killed. Their names derive from the input's, and the
        format of one cut short is unknown, so every name an output could have goes."""
        extensions = sorted(set(EXTENSIONS.values()))
        generation = claim.processing.generation  # a reprocess's: never the outputs still served
        names = [
            output_name_for(claim.input_name, extension, index, generation)
            for index, output in enumerate(claim.processing.outputs)
            if output.name not in claim.kept_names
            for extension in extensions
        ]
        await self._storage.remove(Area.PROCESSED, names)
        log.info("task %s was cancelled; its render is abandoned and its outputs removed", task_id)
        self._record(claim, TaskStatus.CANCELLED)

    async def _finish_failed(
        self, task_id: int, reason: str, claim: _Claim, partial: dict[str, Any] | None = None
    ) -> bool:
        tracing.fail(reason)  # the span it failed in (`render`, or the message's `process`)
        marked = await tasks.finish_failed(self._driver_pool, task_id, reason, claim.started_at, partial)
        self._record(claim, TaskStatus.FAILED)
        return marked

    async def _remove_if_cancelled(self, task_id: int, claim_generation: int, files: list[str]) -> None:
        """A partly failed run whose task was cancelled (or reprocessed after a cancel) meanwhile:
        nothing it made stays (were the task finished elsewhere instead, its files are the same
        names, and stay)."""
        generation = await tasks.generation_of(self._driver_pool, task_id)
        status = await self._status(task_id)
        if status in (None, TaskStatus.CANCELLED) or generation != claim_generation:
            await self._storage.remove(Area.PROCESSED, files)
            log.info("task %s was cancelled or deleted meanwhile; its outputs are removed", task_id)


def _kept_outputs(partial: dict[str, Any] | None, processing: Processing) -> tuple[dict[str, Any], ...]:
    """The outputs a failed run recorded as made, to keep (core/task_controls.py): only when they
    were made for this very processing (a reprocess since then has a new generation)."""
    if not partial or partial.get("generation", 0) != processing.generation:
        return ()
    wanted = {output.name for output in processing.outputs}
    return tuple(record for record in partial.get("made") or () if record.get("name") in wanted)


def _in_order(processing: Processing, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output records in the order the processing asks for them (the first is the main output)."""
    by_name = {record["name"]: record for record in records}
    return [by_name[output.name] for output in processing.outputs if output.name in by_name]


async def _unless_lost(lease: _Lease, work: Awaitable[T]) -> T:
    """`work`'s result, or _LeaseLost once the lease is lost first; the work is then cancelled
    (a heavy render's child is killed)."""
    doing = asyncio.ensure_future(work)
    losing = asyncio.ensure_future(lease.lost.wait())
    try:
        await asyncio.wait({doing, losing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        losing.cancel()
        if not doing.done():
            doing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await doing
    if doing.cancelled():
        raise _LeaseLost
    return doing.result()


def _is_disk_full(exc: BaseException) -> bool:
    """No space (or quota) left where outputs are written."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


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
