"""A worker process's Prometheus metrics, and the small HTTP server that exposes them.

Each worker process owns its metrics and serves them itself on WORKER_METRICS_PORT (Prometheus
scrapes every worker as its own target): there is no shared state between workers to aggregate,
and Prometheus sums across targets at query time.

The server is prometheus_client's threaded WSGI server, not an asyncio one: a scrape is answered
from its own thread even while the event loop is busy or stuck, which is exactly when an operator
wants the numbers. It binds all interfaces because Prometheus scrapes from another host or
container; the numbers carry no task content (counts, durations, preset names).
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.context_managers import InprogressTracker
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

METRICS_HOST = "0.0.0.0"
# From a thumbnail-sized image (a few ms) to a frame-heavy animation near the limits (tens of s).
PROCESSING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class MetricsPortInUse(RuntimeError):
    """WORKER_METRICS_PORT is taken (another worker on this host?): an operator must choose."""


class WorkerMetrics:
    """What one worker process counts. Its own registry, so building one twice (tests, several
    in-process workers) never collides in prometheus_client's global registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._in_flight = Gauge(
            "imagequeue_worker_in_flight",
            "Messages this worker process is handling now (claimed, rendering or settling).",
            registry=self.registry,
        )
        self._finished = Counter(
            "imagequeue_tasks_finished",
            "Tasks this worker finished, by final status and preset.",
            ["status", "preset"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "imagequeue_processing_seconds",
            "Time from claim to recorded outcome of the tasks this worker finished, by preset.",
            ["preset"],
            buckets=PROCESSING_BUCKETS,
            registry=self.registry,
        )
        self._renders = Counter(
            "imagequeue_worker_renders",
            "Light renders this worker started, by lane: regular, or urgent (interactive tasks when "
            "every regular lane was busy; WORKER_URGENT_LANES).",
            ["lane"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def handling(self) -> InprogressTracker:
        """Context manager around one message's handling: counts it in flight until it is settled."""
        return self._in_flight.track_inprogress()

    def task_finished(self, *, status: str, preset: str, seconds: float) -> None:
        """Record a task that reached a final status (`done`, `failed` or `cancelled`) after
        `seconds` of work."""
        self._finished.labels(status=status, preset=preset).inc()
        self._seconds.labels(preset=preset).observe(seconds)

    def render_started(self, lane: str) -> None:
        """A light render took a lane (worker/lanes.py)."""
        self._renders.labels(lane=lane).inc()

    def serve(self, port: int) -> int:
        """Serve /metrics on `port` (0: any free port) from a daemon thread; returns the port bound."""
        try:
            self._server, self._thread = start_http_server(port, addr=METRICS_HOST, registry=self.registry)
        except OSError as exc:
            raise MetricsPortInUse(
                f"cannot serve metrics on port {port} ({exc.strerror or exc}): give each worker on a "
                "host its own WORKER_METRICS_PORT, or 0 to turn its metrics off"
            ) from exc
        bound = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", METRICS_HOST, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
