"""The JetStream side of imagequeue: names, connection, stream and consumer set-up, publishing.

One stream (`IMAGE_TASKS`, file storage, work-queue retention) holds one message per task; one
durable pull consumer (`image-workers`, explicit acks, unlimited redelivery: the row counts attempts)
is shared by every worker process. Whichever
process starts first creates both; the others find them in place (JetStream's create calls are
idempotent for an identical configuration). A message's body is the task id and nothing else;
its `Nats-Msg-Id` header is derived from the id and attempt count, so a publish repeated within the
duplicate window
(a retried request, the outbox relay racing the API) is stored once.

Replicas (STREAM_REPLICAS, CONSUMER_REPLICAS): on a NATS cluster the stream and its consumer are
each a Raft group of that many nodes, so losing a minority of them loses no message and stops no
worker. An existing stream with fewer replicas than configured is scaled up on start-up (JetStream
copies its messages to the new peers; a consumer left at 0 replicas follows the stream). One with
more is left alone, with a warning: during a rolling change, or with one process configured
differently, scaling down would take redundancy away and the processes would undo each other's
changes. Scaling down is an operator's step (`nats stream edit IMAGE_TASKS --replicas 1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from core import loops, tracing
from core.models import MAX_TASK_ID

log = logging.getLogger(__name__)

T = TypeVar("T")

STREAM = "IMAGE_TASKS"
SUBJECT = "imagequeue.tasks"
DURABLE = "image-workers"
# Plain NATS (not in the stream): a worker says it let go of a message, so that the API's
# dispatcher fills the freed place in the window at once instead of at its next look.
SETTLED_SUBJECT = "imagequeue.settled"

# Long enough to catch a retried publish or the relay racing the request (seconds apart); shorter
# than the shortest processing lease, so a task re-queued by the lease sweep is never taken for one.
DUPLICATE_WINDOW_SECONDS = 30.0
PUBLISH_TIMEOUT_SECONDS = 5.0
CONNECT_RETRY_SECONDS = 2.0
# How long closing a connection waits for the server to confirm what was sent (acks, publishes): a
# server answers a ping in milliseconds, and one that does not must not hold a shutdown.
CLOSE_FLUSH_SECONDS = 2
# A refused set-up waits for an operator: no point asking JetStream more often.
MISCONFIGURED_RETRY_SECONDS = 30.0
# JetStream's error code for "stream name already in use with a different configuration" (a stream
# or an object store bucket).
STREAM_NAME_IN_USE = 10058


@dataclass(frozen=True)
class ConsumerPolicy:
    """How long a worker may hold a message silently before JetStream offers it to another, and on
    how many nodes the consumer's state lives (0: as many as the stream; JetStream requires exactly
    that for a work-queue stream)."""

    ack_wait_seconds: float
    replicas: int = 0


async def connect(url: str, *, name: str) -> NATS:
    """Connect, and keep reconnecting for ever: a NATS restart must not need a process restart."""

    async def on_error(exc: Exception) -> None:
        log.warning("NATS connection error: %s", exc)

    async def on_disconnected() -> None:
        log.warning("NATS disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("NATS reconnected")

    return await nats.connect(
        servers=[part.strip() for part in url.split(",")],
        name=name,
        connect_timeout=2,
        reconnect_time_wait=1,
        max_reconnect_attempts=-1,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )


def stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        num_replicas=replicas,
        subjects=[SUBJECT],
        storage=StorageType.FILE,
        retention=RetentionPolicy.WORK_QUEUE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        # A message is a task id: anything larger is a bug or an abuse.
        max_msg_size=1024,
    )


def consumer_config(policy: ConsumerPolicy) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=DURABLE,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=policy.ack_wait_seconds,
        # Unlimited: a database outage may outlast any count. The task's own `attempts` (in its
        # row) bound real processing failures; see worker/consumer.py.
        max_deliver=-1,
        filter_subject=SUBJECT,
        max_ack_pending=10_000,
        num_replicas=policy.replicas,
    )


class QueueMisconfigured(RuntimeError):
    """JetStream refused our stream or consumer set-up: retrying will not help, an operator must."""


def is_misconfiguration(exc: BaseException) -> bool:
    """A JetStream API refusal (not 503 "JetStream not ready yet", which passes by itself)."""
    return isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError)


async def ensure_stream(js: JetStreamContext, replicas: int = 1) -> int:
    """Create the stream, or bring an existing one's configuration up to date; returns its replicas.

    Replicas only ever go up here (see the module docstring). Only "already exists with another
    configuration" is handled; any other error (no JetStream on the server, more replicas than the
    cluster has nodes, an immutable setting changed, no permission) propagates to stop start-up
    loudly.
    """
    try:
        await js.add_stream(stream_config(replicas))
        return replicas
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    current = (await js.stream_info(STREAM)).config.num_replicas or 1
    kept = max(current, replicas)
    if current > replicas:
        log.warning(
            "stream %s has %d replicas, more than the %d configured: keeping them (scaling down is "
            "an operator's step)",
            STREAM,
            current,
            replicas,
        )
    elif current < replicas:
        log.warning("stream %s has %d replica(s); scaling it up to %d", STREAM, current, replicas)
    log.info("stream %s exists with another configuration; updating it", STREAM)
    await js.update_stream(stream_config(kept))
    return kept


async def ensure_consumer(js: JetStreamContext, policy: ConsumerPolicy) -> None:
    """Create the durable consumer, or update it to `policy` (create-or-update on the server)."""
    await js.add_consumer(STREAM, consumer_config(policy))


async def ensure_task_queue(js: JetStreamContext, stream_replicas: int, policy: ConsumerPolicy) -> None:
    """The stream and the workers' consumer: what a worker needs before it fetches."""
    await ensure_stream(js, stream_replicas)
    await ensure_consumer(js, policy)


class Connection(Generic[T]):
    """A process's NATS connection and the JetStream set-up its owner needs (the stream, the
    buckets), made the one way every process makes it: connect, waiting for a server that is not
    up yet; then `ensure` the set-up, retrying while JetStream is not ready. A refusal (see
    is_misconfiguration) is QueueMisconfigured; `open(keep_trying=True)` reports it in `problem`
    (for /ready) and asks again every MISCONFIGURED_RETRY_SECONDS instead.
    """

    def __init__(
        self, url: str, *, name: str, what: str, ensure: Callable[[JetStreamContext], Awaitable[T]]
    ) -> None:
        self._url = url
        self._name = name
        self._what = what
        self._ensure = ensure
        self.nc: NATS | None = None
        # Made once: every upload's publish goes through it.
        self._js: JetStreamContext | None = None
        # What `ensure` returned, once it succeeded.
        self.made: T | None = None
        self._ensured = False
        # Why NATS is not usable beyond being unreachable, for /ready (None: nothing known).
        self.problem: str | None = None

    @property
    def is_ready(self) -> bool:
        return self.nc is not None and self.nc.is_connected and self._ensured

    @property
    def jetstream(self) -> JetStreamContext:
        assert self._js is not None, "not connected yet"
        return self._js

    async def open(self, stop: asyncio.Event, *, keep_trying: bool = False) -> bool:
        """Connect and ensure; False if `stop` was set first."""
        if self.nc is None:
            self.nc = await loops.retry(self._connect, stop=stop, pause=_server_not_up)
            if self.nc is None:
                return False
            self._js = self.nc.jetstream()
        pause = self._report_refusal if keep_trying else _not_ready_or_raise
        ensured = await loops.retry(self._ensured_once, stop=stop, pause=pause)
        return ensured is not None

    async def close(self, flush_seconds: int = CLOSE_FLUSH_SECONDS) -> None:
        """Flush what was sent, then close; bounded whatever the server does. (nc.drain() would wait
        its 30 s drain timeout on the request inbox of a server that does not answer, and
        swallows a cancel.)"""
        nc = self.nc
        if nc is None or nc.is_closed:
            return
        with contextlib.suppress(Exception):
            await nc.flush(timeout=flush_seconds)
        await loops.bounded(nc.close(), loops.STOP_GRACE_SECONDS, f"closing the {self._name} connection")

    async def ensure(self) -> T:
        """Run `ensure` once more (after a NATS restart that may have lost the set-up); a refusal
        raises QueueMisconfigured."""
        try:
            self.made = await self._ensure(self.jetstream)
        except Exception as exc:
            if is_misconfiguration(exc):
                raise QueueMisconfigured(f"JetStream refused {self._what}: {exc}") from exc
            raise
        self._ensured = True
        self.problem = None
        return self.made

    async def _ensured_once(self) -> bool:
        await self.ensure()
        return True

    async def _connect(self) -> NATS:
        return await connect(self._url, name=self._name)

    def _report_refusal(self, exc: Exception) -> float:
        if not isinstance(exc, QueueMisconfigured):
            return _not_ready_or_raise(exc)
        # Not hidden: /ready says "misconfigured" and this is logged until it is fixed.
        self.problem = "misconfigured"
        log.error("%s; fix it, retrying in %.0f s", exc, MISCONFIGURED_RETRY_SECONDS)
        return MISCONFIGURED_RETRY_SECONDS


def _server_not_up(exc: Exception) -> float:
    # Refused, unresolvable, timed out: all pass once NATS is up.
    log.warning("NATS not available yet (%s); retrying in %.0f s", exc, CONNECT_RETRY_SECONDS)
    return CONNECT_RETRY_SECONDS


def _not_ready_or_raise(exc: Exception) -> float:
    if isinstance(exc, QueueMisconfigured):
        raise exc
    log.warning("JetStream not ready (%s); retrying in %.0f s", exc, CONNECT_RETRY_SECONDS)
    return CONNECT_RETRY_SECONDS


def message_id(task_id: int, attempts: int = 0, generation: int = 0, retries: int = 0) -> str:
    """Same task, same attempt count: same id, so JetStream keeps one copy. A task put back in the
    queue after an expired lease has more attempts, so its new message is not mistaken for a copy;
    a reprocessed one (attempts counted from 0 again) has a new generation (core/reprocessing.py),
    and a retried one (the same) a new count of retries (core/task_controls.py)."""
    made = f"task-{task_id}-g{generation}-{attempts}" if generation else f"task-{task_id}-{attempts}"
    # Without retries, the id every earlier release sent (a rolling upgrade deduplicates the same).
    return made + (f"-r{retries}" if retries else "")


async def publish_task(
    js: JetStreamContext,
    task_id: int,
    attempts: int = 0,
    generation: int = 0,
    retries: int = 0,
    *,
    traceparent: str | None = None,
) -> None:
    """Put a task id in the stream; returns once JetStream has stored it (or raises). Traced under
    the current span, or under `traceparent` (the task's stored one) when given."""
    msg_id = message_id(task_id, attempts, generation, retries)
    with tracing.publishing(SUBJECT, msg_id, task_id, parent=traceparent) as trace_headers:
        await js.publish(
            SUBJECT,
            str(task_id).encode(),
            stream=STREAM,
            timeout=PUBLISH_TIMEOUT_SECONDS,
            headers={"Nats-Msg-Id": msg_id, **trace_headers},
        )


async def announce_settled(nc: NATS) -> None:
    """Tell the dispatchers a message was let go of (done, failed or handed back); never raises:
    they also look on their own every fraction of a second."""
    with contextlib.suppress(Exception):
        await nc.publish(SETTLED_SUBJECT, b"")


def parse_task_id(payload: bytes) -> int | None:
    """The task id a message carries, or None for a payload no publisher of ours would send."""
    text = payload.decode("ascii", errors="replace").strip()
    # Out of the id column's range, the claim would fail with a data error, redelivered for ever.
    if not text.isdigit() or len(text) > 10:
        return None
    task_id = int(text)
    return task_id if 1 <= task_id <= MAX_TASK_ID else None
