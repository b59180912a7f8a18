"""Published tasks' queued marks, written by group commit: one UPDATE for every task published
while the last one was being written (api/dispatcher.py `queue_new`, with no window).

A request that published its own task waits for the write that carries its mark, so the row says
`queued` by the time the answer is sent, as with a dispatcher pass. A write that fails is logged
and not retried: those rows stay unmarked, the next pass publishes them again under the same
`Nats-Msg-Id`, and JetStream drops the copy.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from core import tasks

log = logging.getLogger(__name__)


class QueuedMarks:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[int] = []
        # Resolved when the write that takes the waiting ids ends.
        self._next: asyncio.Future[None] | None = None
        self._writing: asyncio.Task[None] | None = None

    async def mark(self, task_id: int) -> None:
        """Mark the published task queued, in the next write; never raises (see the module's doc)."""
        self._waiting.append(task_id)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        written = self._next
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write())
        await asyncio.shield(written)

    async def _write(self) -> None:
        while self._waiting:
            ids, self._waiting = self._waiting, []
            written, self._next = self._next, None
            try:
                await tasks.mark_queued(self._pool, ids)
            except Exception as exc:
                log.warning(
                    "could not mark %d published task(s) queued; a pass publishes them again: %s",
                    len(ids),
                    exc,
                )
            finally:
                if written is not None and not written.done():
                    written.set_result(None)

    async def close(self) -> None:
        """Let the write under way end (it is one statement, bounded by the pool's timeouts)."""
        if self._writing is not None:
            await asyncio.wait({self._writing})
