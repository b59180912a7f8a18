"""Getting committed tasks into JetStream: the API's one NATS connection, and publishing on it.

The row is committed before its id is published. If the publish fails (NATS down, the process
killed in between), the row keeps `queued_at IS NULL` and the outbox relay (api/relay.py) publishes
it later; the message id (`Nats-Msg-Id`) makes any double publish harmless.

Marking rows queued is a group commit: the requests published while one mark is being written
share the next one (one UPDATE for all of them), and each waits for the one holding its row.
Under load that is one short transaction for many uploads instead of one each; alone, it is a
single transaction.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from core import loops, queue, tasks
from core.db import DriverPool

log = logging.getLogger(__name__)


class TaskPublisher:
    """Holds the API's one NATS connection for the process lifetime; never connects per request."""

    def __init__(self, nats_url: str, driver_pool: DriverPool, *, stream_replicas: int = 1) -> None:
        self._driver_pool = driver_pool
        self._connection: queue.Connection[int] = queue.Connection(
            nats_url,
            name="imagequeue-api",
            what="the stream",
            ensure=lambda js: queue.ensure_stream(js, stream_replicas),
        )
        self._background = loops.Background("task publisher")
        # Published tasks waiting for their `queued_at`, and the task writing the current batch.
        self._unmarked: list[tuple[int, asyncio.Future[None]]] = []
        self._marking: asyncio.Task | None = None

    @property
    def is_ready(self) -> bool:
        return self._connection.is_ready

    @property
    def nats_problem(self) -> str | None:
        """Why NATS is not usable beyond being unreachable, for /ready (None: nothing known)."""
        return self._connection.problem

    @property
    def jetstream(self) -> JetStreamContext | None:
        """The JetStream context on this process's connection, once ready (for /metrics, the relay
        and the sweeps)."""
        return self._connection.jetstream if self.is_ready else None

    def start(self) -> None:
        """Connect in the background: the API serves (and accepts uploads) while NATS is down."""
        self._background.start(
            self._connection.open(self._background.stop, keep_trying=True), name="nats-connect"
        )

    async def close(self) -> None:
        """Stop connecting, let the last marks be written, close the connection: each bounded, so
        a NATS or PostgreSQL that does not answer cannot hold the shutdown."""
        await self._background.close()
        if self._marking is not None:
            await loops.bounded(self._marking, loops.STOP_GRACE_SECONDS, "queued marks")
        await self._connection.close()

    async def publish_committed(self, task_id: int, generation: int = 0, *, retries: int = 0) -> bool:
        """Publish a committed task now (with 0 attempts, of its reprocess `generation` and its count
        of `retries`); False leaves it to the relay (never raises)."""
        js = self.jetstream
        if js is None:
            return False
        try:
            await queue.publish_task(js, task_id, generation=generation, retries=retries)
        except Exception as exc:  # any failure here is retried by the relay
            log.warning("publish of task %s failed, the outbox relay will retry: %s", task_id, exc)
            return False
        try:
            await self._mark_queued(task_id)
        except Exception as exc:  # published but not marked: the relay re-publishes, deduplicated
            log.warning("task %s is queued but could not be marked so: %s", task_id, exc)
        return True

    async def _mark_queued(self, task_id: int) -> None:
        """Set the task's `queued_at`, in the same UPDATE as the other tasks published meanwhile."""
        marked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unmarked.append((task_id, marked))
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._write_marks(), name="outbox-marks")
        await marked

    async def _write_marks(self) -> None:
        while self._unmarked:
            batch, self._unmarked = self._unmarked, []
            try:
                # One statement on the driver pool (core.tasks): through a session it was 4% of the
                # API's CPU at 16 uploads at a time.
                await tasks.mark_queued(self._driver_pool, [task_id for task_id, _ in batch])
            except Exception as exc:
                for _, marked in batch:
                    if not marked.done():  # done: its request was cancelled (client gone)
                        marked.set_exception(exc)
                continue
            for _, marked in batch:
                if not marked.done():
                    marked.set_result(None)
