"""`python -m worker`: pull task ids from JetStream and process them, a bounded number at a time.

The loop asks for as many messages as it has free slots, hands each to a TaskProcessor, and keeps
going across NATS reconnects: an empty queue is a fetch timeout, an error is logged and retried, and
a subscription that stays silent while the consumer reports waiting messages (as can happen after a
server restart) is re-created.

Pillow renders WORKER_CONCURRENCY images at a time (its thread pool), but the loop holds up to
PIPELINE_DEPTH times as many messages: while some images render, the others are being fetched,
claimed, recorded and acknowledged, so the round trips to PostgreSQL and NATS and the output's
fsyncs overlap with rendering instead of leaving a render slot idle. Each urgent lane
(WORKER_URGENT_LANES, for interactive tasks: worker/lanes.py) adds one render and one message held.

Each message let go of (settled either way) is announced on plain NATS (queue.SETTLED_SUBJECT):
the API's dispatcher, holding tasks back to keep its window, fills the freed place at once.

SIGTERM or SIGINT: stop fetching, let the images in flight finish and settle, flush, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from config import ConfigError, Settings, get_settings
from core import loops, queue, tracing
from core.db import make_driver_pool, make_engine, make_sessionmaker
from core.formats import configure_pillow
from core.logs import configure_logging
from core.storage import make_storage
from worker.consumer import TaskPolicy, TaskProcessor
from worker.metrics import MetricsPortInUse, WorkerMetrics
from worker.pool import RenderPool
from worker.render_job import render_settings
from worker.retention import purge_until_stopped

log = logging.getLogger("worker")

FETCH_TIMEOUT_SECONDS = 2.0
# Messages held per render slot (see the module docstring); only WORKER_CONCURRENCY images are ever
# decoded at once, so the extra messages held add no decoded image to memory.
PIPELINE_DEPTH = 2
# After this long without a message, ask the server whether messages are in fact waiting.
IDLE_CHECK_SECONDS = 10.0
# The liveness file is touched at most this often (healthchecks allow a minute): a touch per fetch
# was 6% of the event loop's time while draining a backlog.
HEARTBEAT_FILE_SECONDS = 1.0
# At exit, how long the last acks may take to be confirmed.
ACK_FLUSH_SECONDS = 5


class _LivenessFile:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._touched_at = float("-inf")

    def touch(self) -> None:
        now = time.monotonic()
        if self._path is not None and now - self._touched_at >= HEARTBEAT_FILE_SECONDS:
            self._path.touch()
            self._touched_at = now


class _Subscription:
    """The pull subscription on the shared durable consumer, re-created when it goes silent."""

    def __init__(self, connection: queue.Connection[None]) -> None:
        # Opened: the stream and the consumer were ensured.
        self._connection = connection
        self.nc = connection.nc
        self._js = connection.jetstream
        self._sub: JetStreamContext.PullSubscription | None = None
        self._ensure_again = False

    async def fetch(self, batch: int) -> list[Msg]:
        if self._sub is None:
            if self._ensure_again:
                # A NATS restart that lost its store lost the stream too; a refusal raises
                # QueueMisconfigured.
                await self._connection.ensure()
            self._sub = await self._js.pull_subscribe_bind(queue.DURABLE, queue.STREAM)
        return await self._sub.fetch(batch, timeout=FETCH_TIMEOUT_SECONDS)

    async def messages_waiting(self) -> int:
        info = await self._js.consumer_info(queue.STREAM, queue.DURABLE)
        return info.num_pending

    async def reset(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._sub = None
        self._ensure_again = True


async def run(settings: Settings, stop: asyncio.Event, metrics: WorkerMetrics | None = None) -> None:
    metrics = metrics or WorkerMetrics()
    configure_pillow(settings.max_image_pixels)
    # Before render_settings: whether the render jobs record their steps for the trace.
    traced = tracing.configure_tracing(settings.otel_exporter_otlp_endpoint, tracing.WORKER_SERVICE)
    # First: a bad PRESETS or an unusable WATERMARK_IMAGES file stops start-up before any connection.
    rendering = render_settings(settings)
    storage = make_storage(settings, client_name="imagequeue-worker-storage")
    storage.folders.ensure_dirs()
    # The task rows' changes go straight through the driver: one connection per message held (plus
    # one for a lease renewal), so a full pipeline never waits for one. A dead connection
    # (PostgreSQL restarted) fails its statement, which the consumer treats as an outage (nak,
    # pause fetching), and asyncpg replaces it on the next checkout. The engine serves retention.
    database = await make_driver_pool(settings.database_url, max_size=messages_held(settings) + 1)
    engine = make_engine(settings.database_url, pool_size=1, pre_ping=False)
    pool = RenderPool(
        settings.worker_pool,
        settings.worker_concurrency,
        max_pixels=settings.max_image_pixels,
        urgent_lanes=settings.worker_urgent_lanes,
        on_lane=metrics.render_started,
    )
    sessions = make_sessionmaker(engine)
    processor = TaskProcessor(
        driver_pool=database,
        storage=storage,
        pool=pool,
        metrics=metrics,
        render=rendering,
        policy=TaskPolicy(
            ack_wait_seconds=settings.ack_wait_seconds,
            max_attempts=settings.max_attempts,
            retry_delay_seconds=settings.retry_delay_seconds,
            heavy_render_pixels=settings.heavy_render_pixels,
            render_timeout_seconds=settings.render_timeout_seconds,
        ),
    )
    policy = queue.ConsumerPolicy(settings.ack_wait_seconds, settings.consumer_replicas)
    connection: queue.Connection[None] = queue.Connection(
        settings.nats_url,
        name="imagequeue-worker",
        what="the stream or consumer",
        ensure=lambda js: queue.ensure_task_queue(js, settings.stream_replicas, policy),
    )
    in_flight: set[asyncio.Task] = set()

    async def announce_stop() -> None:
        await stop.wait()
        log.info("stop requested with %d image(s) in flight; fetching no more", len(in_flight))

    announcer = asyncio.create_task(announce_stop())
    background = loops.Background("worker loops")
    try:
        # A refused stream, consumer or bucket set-up raises QueueMisconfigured (exit status 1).
        opened = await connection.open(stop)
        # Before the first fetch (a task taken while the file store is unreachable would only be
        # given back) and the first retention pass (which would wait an hour to try again).
        await storage.connect(stop)
        if settings.retention_days:
            background.start(
                purge_until_stopped(sessions, storage, settings.retention_days, background.stop),
                name="retention",
            )
        if opened and not stop.is_set():
            await _fetch_loop(_Subscription(connection), processor, settings, stop, in_flight, metrics)
    finally:
        announcer.cancel()
        await background.close()
        if in_flight:
            log.info("finishing %d image(s) in flight before exit", len(in_flight))
            await asyncio.gather(*in_flight, return_exceptions=True)
        # Every message is settled by now; the flush sends the last acks.
        await connection.close(flush_seconds=ACK_FLUSH_SECONDS)
        pool.shutdown()
        await storage.close()
        await database.close()
        await engine.dispose()
        if traced:  # last: the spans of the images finished above are exported before exit
            await asyncio.to_thread(tracing.shutdown_tracing)


def messages_held(settings: Settings) -> int:
    """The most messages the fetch loop holds: PIPELINE_DEPTH per regular lane, and one per urgent
    lane. With DISPATCH_WINDOW at the renders the workers run and DISPATCH_URGENT_PLACES at the
    workers, the stream holds fewer than a worker's regular lanes and its urgent lane can take, so
    the interactive task let past a full window always finds a free slot, even beside a heavy
    render (which holds a slot but no lane)."""
    return settings.worker_concurrency * PIPELINE_DEPTH + settings.worker_urgent_lanes


async def _fetch_loop(
    subscription: _Subscription,
    processor: TaskProcessor,
    settings: Settings,
    stop: asyncio.Event,
    in_flight: set[asyncio.Task],
    metrics: WorkerMetrics,
) -> None:
    concurrency = messages_held(settings)
    last_message = time.monotonic()
    liveness = _LivenessFile(settings.worker_heartbeat_file)
    log.info(
        "worker ready: up to %d image(s) rendering at a time (and %d for interactive tasks), "
        "%d message(s) held",
        settings.worker_concurrency,
        settings.worker_urgent_lanes,
        concurrency,
    )
    while not stop.is_set():
        liveness.touch()
        paused = processor.paused_until - time.monotonic()
        if paused > 0:
            # The database is down or the output volume full: take nothing new until it may be back
            # (in-flight work goes on).
            await loops.wait_or_stop(stop, paused)
            continue
        free = concurrency - len(in_flight)
        if free <= 0:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED, timeout=FETCH_TIMEOUT_SECONDS)
            continue
        try:
            messages = await subscription.fetch(free)
        except nats.errors.TimeoutError:
            if time.monotonic() - last_message > IDLE_CHECK_SECONDS:
                last_message = time.monotonic()
                await _check_silence(subscription)
            continue
        except queue.QueueMisconfigured:
            raise
        except Exception as exc:
            log.warning("fetch failed (%s); re-creating the subscription", exc)
            await subscription.reset()
            await loops.wait_or_stop(stop, queue.CONNECT_RETRY_SECONDS)
            continue
        last_message = time.monotonic()
        for message in messages:
            task = asyncio.create_task(_handle_counted(processor, message, metrics, subscription.nc))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)


async def _handle_counted(
    processor: TaskProcessor, message: Msg, metrics: WorkerMetrics, nc: NATS | None
) -> None:
    with metrics.handling():
        await processor.handle(message)
    if nc is not None:
        await queue.announce_settled(nc)


async def _check_silence(subscription: _Subscription) -> None:
    try:
        waiting = await subscription.messages_waiting()
    except Exception as exc:
        log.warning("consumer check failed (%s); re-creating the subscription", exc)
        await subscription.reset()
        return
    if waiting:
        log.warning("%d message(s) waiting but none delivered; re-creating the subscription", waiting)
        await subscription.reset()


def main() -> int:
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_lines=settings.log_json)
    metrics = WorkerMetrics()
    if settings.worker_metrics_port:
        try:
            metrics.serve(settings.worker_metrics_port)
        except MetricsPortInUse as exc:
            log.critical("%s", exc)
            return 1

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run(settings, stop, metrics)

    try:
        asyncio.run(serve())
    except queue.QueueMisconfigured as exc:
        log.critical("%s", exc)
        return 1
    except ConfigError as exc:  # found only once loaded: PRESETS, WATERMARK_IMAGES' files
        log.critical("worker: %s", exc)
        return 2
    finally:
        metrics.close()
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
