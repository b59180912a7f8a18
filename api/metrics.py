"""Prometheus metrics of one API process: `GET /metrics` (left out of the OpenAPI schema).

- Uploads by outcome are counted from each `POST /upload` answer's status line and headers by a
  pure ASGI layer, so the upload route stays unaware of them and no body is buffered: 200/303 →
  `accepted`, `Idempotent-Replayed: true` → `replayed`, 4xx → `refused`, 5xx (or an exception
  that escapes the app) → `unavailable`; `code` keeps the status code.
- Tasks by status and the JetStream consumer's counts are read when Prometheus scrapes, each
  bounded by SCRAPE_TIMEOUT_SECONDS. A dependency that fails or is slow shows as
  `imagequeue_database_up 0` or `imagequeue_nats_up 0`, and the scrape itself still answers 200:
  an outage must show up on the dashboard, not as a hole in it.
- One API process (API_PROCESSES=1): the counters are this process's own, with its process_* and
  python_gc_* series. Several on one socket (api/supervisor.py): the parent hands each child
  PROMETHEUS_MULTIPROC_DIR, prometheus_client keeps every child's counts in a file there, and any
  child answers the scrape with the sum over all of them (a child that was replaced included), so
  the totals are the same whichever one Prometheus reaches. process_* and python_gc_* are then left
  out: each describes only the child that happened to answer. The database and queue figures are
  read at scrape time, the same from any process.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import ServicesDep
from api.state import Services
from api.supervisor import METRICS_DIR_VARIABLE
from core import queue, tasks
from core.models import TaskStatus

log = logging.getLogger(__name__)

UPLOAD_PATH = "/upload"
# Well inside Prometheus's default 10 s scrape timeout, with both reads running at once.
SCRAPE_TIMEOUT_SECONDS = 2.0


class ApiMetrics:
    """What the API counts, in a registry of its own (building two apps in one process, as tests do,
    never collides in prometheus_client's global registry). `registry` is what a scrape shows."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        PlatformCollector(registry=self.registry)
        counted_in: CollectorRegistry | None = self.registry
        if multiprocess_dir is None:
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        else:
            # The counter writes to this process's file; the scrape reads every process's.
            MultiProcessCollector(self.registry, path=multiprocess_dir)
            counted_in = None
        self._uploads = Counter(
            "imagequeue_uploads",
            "Upload requests answered by the API, by outcome "
            "(accepted, replayed, refused, unavailable) and status code.",
            ["outcome", "code"],
            registry=counted_in,
        )

    @classmethod
    def for_this_process(cls) -> ApiMetrics:
        """Summed over the API's processes when the supervisor started this one among several:
        prometheus_client itself reads PROMETHEUS_MULTIPROC_DIR when first imported, to put its
        counters in files there, so the scrape must read the same folder."""
        return cls(os.environ.get(METRICS_DIR_VARIABLE) or None)

    def upload_answered(self, status: int, *, replayed: bool) -> None:
        self._uploads.labels(outcome=upload_outcome(status, replayed=replayed), code=str(status)).inc()


def upload_outcome(status: int, *, replayed: bool) -> str:
    if status >= 500:
        return "unavailable"
    if status >= 400:
        return "refused"
    return "replayed" if replayed else "accepted"


class UploadCounter:
    """Counts `POST /upload` answers by outcome; passes everything else through untouched."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        answered = False

        async def counting_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                replayed = any(
                    name.lower() == b"idempotent-replayed" and value.lower() == b"true"
                    for name, value in message.get("headers", [])
                )
                self.metrics.upload_answered(message["status"], replayed=replayed)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            # Escaped every handler: the server's last-resort layer will answer 500.
            if not answered:
                self.metrics.upload_answered(500, replayed=False)
            raise


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


@dataclass(frozen=True)
class Readings:
    """What the dependencies said at scrape time; None where they did not answer in time."""

    tasks_by_status: dict[str, int] | None
    nats_up: bool
    consumer: ConsumerInfo | None


async def _tasks_by_status(services: Services) -> dict[str, int] | None:
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_SECONDS), services.engine.connect() as connection:
            return await tasks.count_by_status(connection)
    except Exception as exc:
        log.warning("metrics: cannot count tasks by status: %s", exc or type(exc).__name__)
        return None


async def _consumer(services: Services) -> tuple[bool, ConsumerInfo | None]:
    js = services.publisher.jetstream
    if js is None:
        return False, None
    try:
        info = await js.consumer_info(queue.STREAM, queue.DURABLE, timeout=SCRAPE_TIMEOUT_SECONDS)
    except NotFoundError:
        return True, None  # NATS answers; no worker has created the consumer yet
    except Exception as exc:
        log.warning("metrics: cannot read the JetStream consumer: %s", exc or type(exc).__name__)
        return False, None
    return True, info


async def read_dependencies(services: Services) -> Readings:
    tasks, (nats_up, consumer) = await asyncio.gather(_tasks_by_status(services), _consumer(services))
    return Readings(tasks_by_status=tasks, nats_up=nats_up, consumer=consumer)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def dependency_metrics(readings: Readings) -> Iterator[Metric]:
    yield _gauge(
        "imagequeue_database_up",
        "1 if PostgreSQL answered this scrape's query in time, else 0.",
        1 if readings.tasks_by_status is not None else 0,
    )
    if readings.tasks_by_status is not None:
        tasks = GaugeMetricFamily("imagequeue_tasks", "Tasks in the database, by status.", labels=["status"])
        for status in TaskStatus:
            tasks.add_metric([status.value], readings.tasks_by_status.get(status.value, 0))
        yield tasks
    yield _gauge(
        "imagequeue_nats_up",
        "1 if NATS JetStream answered this scrape in time, else 0.",
        1 if readings.nats_up else 0,
    )
    info = readings.consumer
    if info is not None:
        yield _gauge(
            "imagequeue_queue_pending",
            "Messages in the stream not yet delivered to a worker (queue depth).",
            info.num_pending or 0,
        )
        yield _gauge(
            "imagequeue_queue_ack_pending",
            "Messages delivered to a worker and not yet acknowledged (in progress or lost with it).",
            info.num_ack_pending or 0,
        )
        yield _gauge(
            "imagequeue_queue_redelivered",
            "Messages delivered more than once and not yet acknowledged.",
            info.num_redelivered or 0,
        )


class _Scrape:
    """The process's registry plus this scrape's readings, as one collector for generate_latest.
    Readings are per scrape, not stored: concurrent scrapes cannot see each other's."""

    def __init__(self, registry: CollectorRegistry, extra: Iterable[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._extra


async def get_metrics(request: Request) -> ApiMetrics:  # async: no thread hop (see api.deps)
    return request.app.state.metrics


MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request, services: ServicesDep, api_metrics: MetricsDep) -> Response:
    """The upload counters (every API process's) and, read now, the tasks by status and the queue's
    depth."""
    readings = await read_dependencies(services)
    # The format Prometheus asks for (its Accept header), as prometheus_client's own exporters do.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encode(_Scrape(api_metrics.registry, dependency_metrics(readings)))
    return Response(body, headers={"Content-Type": content_type})
