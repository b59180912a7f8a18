"""The API's one NATS connection, for the dispatcher (api/dispatcher.py), /metrics and the sweeps.

Tasks reach JetStream through the dispatcher (api/dispatcher.py): with a window, a request commits
its row and wakes it, and so does a worker's word that it let go of a message (queue.SETTLED_SUBJECT),
received here; without one, a request publishes its new task through it itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from core import loops, queue

log = logging.getLogger(__name__)


class TaskPublisher:
    """Holds the API's one NATS connection for the process lifetime; never connects per request."""

    def __init__(self, nats_url: str, *, stream_replicas: int = 1) -> None:
        self._connection: queue.Connection[int] = queue.Connection(
            nats_url,
            name="imagequeue-api",
            what="the stream",
            ensure=lambda js: queue.ensure_stream(js, stream_replicas),
        )
        self._background = loops.Background("task publisher")

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

    def start(self, on_settled: Callable[[], None] | None = None) -> None:
        """Connect in the background: the API serves (and accepts uploads) while NATS is down.
        `on_settled` is called whenever a worker says it let go of a message."""
        self._background.start(self._open(on_settled), name="nats-connect")

    async def _open(self, on_settled: Callable[[], None] | None) -> None:
        if not await self._connection.open(self._background.stop, keep_trying=True):
            return
        if on_settled is None or self._connection.nc is None:
            return

        async def settled(_msg: Msg) -> None:
            on_settled()

        # nats-py subscribes again by itself after a reconnect.
        try:
            await self._connection.nc.subscribe(queue.SETTLED_SUBJECT, cb=settled)
        except Exception as exc:  # the dispatcher's own looks still fill the window
            log.warning("could not subscribe to %s: %s", queue.SETTLED_SUBJECT, exc)

    async def close(self) -> None:
        """Stop connecting, close the connection: each bounded, so a NATS that does not answer
        cannot hold the shutdown."""
        await self._background.close()
        await self._connection.close()
