"""OpenTelemetry traces: one trace per task, from the upload's HTTP span through the NATS publish to
the worker's steps, exported by OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

The trace of a task:

    POST /upload                     (SERVER, imagequeue-api)
    ├── publish imagequeue.tasks     (PRODUCER; W3C `traceparent` goes in the message's headers)
    │   ├── queue wait               (imagequeue-worker: stored in the stream -> fetched)
    │   └── process imagequeue.tasks (CONSUMER)
    │       ├── claim, fetch input
    │       ├── render: decode, op <name> (each), encode, store output (each, where the job stores)
    │       ├── store output (each, where the worker stores), finish
    ├── publish imagequeue.tasks     (the outbox relay's or a re-queue's later publish, same parent)
    └── POST                         (CLIENT: the callback delivery, from whichever API process sends it)

The upload span's `traceparent` is kept on the task's row, so what happens later and elsewhere (the
relay's publish, the callback) joins the same trace, and `/status` shows its `trace_id`.

Off (no endpoint), nothing is installed: every hook below is a test of one module global and hands
back a shared no-op context manager, and the SDK is never imported.

A render in a child process (WORKER_POOL=processes, heavy renders) cannot export spans of its own:
it records its steps' times (`StepRecorder`, plain picklable data) and the worker replays them as
spans once the render returns (`replay`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider

API_SERVICE = "imagequeue-api"
WORKER_SERVICE = "imagequeue-worker"
TASK_ID = "imagequeue.task_id"
OUTPUT = "imagequeue.output"
# A task's message carries its trace context in this header (W3C Trace Context).
TRACEPARENT = "traceparent"
# A render records at most this many steps (each op of each output is one): a bound on what one
# task can add to an export, whatever its ops list.
MAX_STEPS = 256

AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]

_propagator = TraceContextTextMapPropagator()
# The process's tracer once configure_tracing (or install) ran; None: tracing is off.
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_NOTHING: AbstractContextManager[None] = nullcontext()
_NO_HEADERS: Mapping[str, str] = {}


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL under OTEL_EXPORTER_OTLP_ENDPOINT, as the OTLP exporter spec says."""
    return endpoint.rstrip("/") + "/v1/traces"


def configure_tracing(endpoint: str, service_name: str) -> bool:
    """Export this process's spans by OTLP/HTTP (protobuf) to `endpoint`; with an empty one, nothing
    happens and nothing is imported. The exporter reads the other standard OTEL_EXPORTER_OTLP_*
    variables (headers, timeout, compression) itself. Whether tracing is now on."""
    if not endpoint:
        return False
    # Imported here: a process that does not trace never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    install(provider)
    return True


def install(provider: TracerProvider) -> None:
    """Trace through `provider` (configure_tracing's, or a test's with an in-memory exporter). Kept
    here rather than as OpenTelemetry's global provider, which a process can set only once."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("imagequeue")


def shutdown_tracing() -> None:
    """Export what is still buffered (bounded by the exporter's timeout) and turn tracing off."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
    parent: str | None = None,
) -> AbstractContextManager[Any]:
    """A span around the block, current inside it (its trace id reaches the logs); under the
    current span, or under `parent` (a stored `traceparent`) when given. An exception leaving the
    block marks the span as failed."""
    if _tracer is None:
        return _NOTHING
    context = _context_of(parent) if parent is not None else None
    return _tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes)


def annotate(**attributes: AttributeValue) -> None:
    """Add attributes to the current span (dots in a name are spelt as `__`)."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    for key, value in attributes.items():
        current.set_attribute(key.replace("__", "."), value)


def fail(description: str) -> None:
    """Mark the current span as failed without an exception (an HTTP 5xx answer, a refused callback)."""
    if _tracer is not None:
        trace.get_current_span().set_status(Status(StatusCode.ERROR, description))


def current_trace_id() -> str | None:
    """The current span's trace id in hex (32 digits), or None outside a span or with tracing off."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def current_traceparent() -> str | None:
    """The current span as a W3C `traceparent` (kept on the task's row), or None."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id inside a stored `traceparent` (`00-<trace id>-<span id>-<flags>`)."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def server_span(method: str, attributes: Attributes, *, parent: str | None) -> AbstractContextManager[Span]:
    """An HTTP request's SERVER span, current for the block; under the client's `traceparent` when
    it sent one (a malformed one is ignored: a new trace). Named by end_server_span once routed."""
    assert _tracer is not None, "only called with tracing on"
    context = _context_of(parent) if parent is not None else None
    return _tracer.start_as_current_span(method, context=context, kind=SpanKind.SERVER, attributes=attributes)


def end_server_span(span: Span, method: str, route: str | None, status: int) -> None:
    if route is not None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # a 4xx is the client's doing: not an error of this server's span
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


def publishing(
    subject: str, message_id: str, task_id: int, *, parent: str | None = None
) -> AbstractContextManager[Mapping[str, str]]:
    """The PRODUCER span of one publish, as the OpenTelemetry messaging conventions name it; gives
    the headers that carry it to the consumer (none when tracing is off)."""
    if _tracer is None:
        return nullcontext(_NO_HEADERS)
    return _publishing(_tracer, subject, message_id, task_id, parent)


@contextmanager
def _publishing(
    tracer: Tracer, subject: str, message_id: str, task_id: int, parent: str | None
) -> Iterator[Mapping[str, str]]:
    attributes = _messaging(subject, message_id, task_id, operation="publish", kind="send")
    context = _context_of(parent) if parent is not None else None
    with tracer.start_as_current_span(
        f"publish {subject}", context=context, kind=SpanKind.PRODUCER, attributes=attributes
    ):
        headers: dict[str, str] = {}
        _propagator.inject(headers)
        yield headers


def processing(msg: Msg, task_id: int, *, consumer_group: str) -> AbstractContextManager[None]:
    """The CONSUMER span of one message's processing, under the publish span its headers name (a
    new trace when they name none), current for the block; first a `queue wait` span beside it,
    from when the stream stored the message until now."""
    if _tracer is None:
        return _NOTHING
    headers = msg.headers or {}
    try:
        stored_at: datetime | None = msg.metadata.timestamp
    except Exception:  # not a JetStream delivery (no metadata in its reply subject): no wait known
        stored_at = None
    message_id = headers.get("Nats-Msg-Id", "")
    return _processing(_tracer, msg.subject, message_id, task_id, headers, stored_at, consumer_group)


@contextmanager
def _processing(
    tracer: Tracer,
    subject: str,
    message_id: str,
    task_id: int,
    headers: Mapping[str, str],
    stored_at: datetime | None,
    consumer_group: str,
) -> Iterator[None]:
    parent = _propagator.extract({TRACEPARENT: headers[TRACEPARENT]}) if TRACEPARENT in headers else None
    now = time.time_ns()
    if stored_at is not None:
        stored = int(stored_at.timestamp() * 1_000_000_000)
        waited = tracer.start_span(
            "queue wait", context=parent, attributes={TASK_ID: task_id}, start_time=min(stored, now)
        )
        waited.end(end_time=now)
    attributes = {
        **_messaging(subject, message_id, task_id, operation="process", kind="process"),
        "messaging.consumer.group.name": consumer_group,
    }
    with tracer.start_as_current_span(
        f"process {subject}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes, start_time=now
    ):
        yield


def entering(name: str, manager: AbstractAsyncContextManager[Any]) -> AbstractAsyncContextManager[Any]:
    """`manager` with a span around its entry only (fetching a file the block then uses)."""
    if _tracer is None:
        return manager
    return _entering(name, manager)


@asynccontextmanager
async def _entering(name: str, manager: AbstractAsyncContextManager[Any]) -> AsyncIterator[Any]:
    with span(name):
        entered = manager.__aenter__()
        value = await entered
    try:
        yield value
    except BaseException as exc:
        if not await manager.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await manager.__aexit__(None, None, None)


def _messaging(subject: str, message_id: str, task_id: int, *, operation: str, kind: str) -> dict[str, Any]:
    # NATS has no value of its own in the conventions' list of systems: its name, as others use it.
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.message.id": message_id,
        TASK_ID: task_id,
    }


def _context_of(traceparent: str) -> Context:
    return _propagator.extract({TRACEPARENT: traceparent})


# --- Steps of a render, recorded where it runs (a thread or a child process), replayed as spans ---


@dataclass(frozen=True)
class Step:
    name: str
    start_ns: int
    end_ns: int
    # The index of the enclosing step in the recording, or None for a top-level one.
    parent: int | None
    attributes: dict[str, AttributeValue]
    error: str | None = None


@dataclass
class StepRecorder:
    steps: list[Step | None] = field(default_factory=list)
    _open: list[int] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, attributes: dict[str, AttributeValue]) -> Iterator[None]:
        if len(self.steps) >= MAX_STEPS:
            yield
            return
        index = len(self.steps)
        parent = self._open[-1] if self._open else None
        self.steps.append(None)  # its place, so that steps stay in the order they started
        self._open.append(index)
        start, error = time.time_ns(), None
        try:
            yield
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
            raise
        finally:
            self._open.pop()
            self.steps[index] = Step(name, start, time.time_ns(), parent, attributes, error)

    def recorded(self) -> list[Step]:
        """The steps, once all have ended (a step's `parent` indexes this list)."""
        ended = [step for step in self.steps if step is not None]
        return ended if len(ended) == len(self.steps) else []


_recorder: ContextVar[StepRecorder | None] = ContextVar("trace_steps", default=None)


@contextmanager
def recording_steps(on: bool) -> Iterator[StepRecorder | None]:
    """Record the `step`s run inside the block (in this thread or process), when `on`."""
    if not on:
        yield None
        return
    recorder = StepRecorder()
    token = _recorder.set(recorder)
    try:
        yield recorder
    finally:
        _recorder.reset(token)


def step(name: str, **attributes: AttributeValue) -> AbstractContextManager[None]:
    """One step of a render, recorded when a recording is on (dots in a name are spelt `__`)."""
    recorder = _recorder.get()
    if recorder is None:
        return _NOTHING
    return recorder.step(name, {key.replace("__", "."): value for key, value in attributes.items()})


def replay(steps: list[Step]) -> None:
    """The recorded steps as spans under the current span, with the times they were recorded at."""
    if _tracer is None or not steps:
        return
    # Steps are listed in the order they started: a parent is made before its children.
    spans: dict[int, Span] = {}
    for index, recorded in enumerate(steps):
        parent_span = spans.get(recorded.parent) if recorded.parent is not None else None
        context = trace.set_span_in_context(parent_span) if parent_span is not None else None
        started = _tracer.start_span(
            recorded.name, context=context, attributes=recorded.attributes, start_time=recorded.start_ns
        )
        if recorded.error is not None:
            started.set_status(Status(StatusCode.ERROR, recorded.error))
        spans[index] = started
    for index, recorded in enumerate(steps):
        spans[index].end(end_time=recorded.end_ns)
