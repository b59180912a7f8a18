"""core/tracing.py on the SDK's in-memory exporter: what each hook makes, and that with tracing off
nothing is made (nor the SDK loaded). The whole trace across real processes: tests/test_traces.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from api.server_spans import ServerSpans
from config import PROJECT_ROOT
from core import tracing
from core.logs import configure_logging, task_context
from core.processing.forms import resolve
from core.processing.presets import BUILTIN_PRESETS
from core.storage import Folders, new_stored_name
from tests import images
from worker.imaging import EncoderSettings, RenderLimits
from worker.render_job import RenderSettings, render_task

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [span for span in exporter.get_finished_spans() if span.name == name]
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]


def test_off_every_hook_is_a_shared_no_op_and_the_sdk_is_never_loaded() -> None:
    assert not tracing.enabled()
    assert tracing.span("claim") is tracing.span("render")
    with tracing.publishing("subject", "task-1-0", 1) as headers:
        assert headers == {}
    assert tracing.current_trace_id() is None and tracing.current_traceparent() is None
    with tracing.recording_steps(False) as recorder:
        assert recorder is None
    # A fresh process, as the API and the worker start: every module that traces imported, the
    # setting empty.
    probe = (
        "import sys, api.main, worker.__main__, worker.consumer, worker.render_job\n"
        "from core import tracing\n"
        "assert tracing.configure_tracing('', tracing.API_SERVICE) is False\n"
        "loaded = ('opentelemetry.sdk', 'opentelemetry.exporter')\n"
        "print(sorted(m for m in sys.modules if m.startswith(loaded)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_a_publish_span_is_a_producer_whose_context_travels_in_the_headers(
    exported: InMemorySpanExporter,
) -> None:
    with (
        tracing.span("POST /upload") as upload,
        tracing.publishing("imagequeue.tasks", "task-7-0", 7) as headers,
    ):
        pass
    publish = _named(exported, "publish imagequeue.tasks")
    assert publish.kind == SpanKind.PRODUCER
    assert publish.parent is not None and publish.parent.span_id == upload.get_span_context().span_id
    assert headers["traceparent"].split("-")[1:3] == [
        f"{publish.context.trace_id:032x}",
        f"{publish.context.span_id:016x}",
    ]
    assert publish.attributes is not None and publish.attributes["imagequeue.task_id"] == 7


def test_a_stored_traceparent_parents_a_later_span(exported: InMemorySpanExporter) -> None:
    with tracing.publishing("imagequeue.tasks", "task-7-1", 7, parent=CLIENT_TRACEPARENT):
        pass
    publish = _named(exported, "publish imagequeue.tasks")
    assert f"{publish.context.trace_id:032x}" == CLIENT_TRACE
    assert publish.parent is not None and f"{publish.parent.span_id:016x}" == "b7ad6b7169203331"
    assert tracing.trace_id_of(CLIENT_TRACEPARENT) == CLIENT_TRACE
    assert tracing.trace_id_of("garbage") is None and tracing.trace_id_of(None) is None


def test_log_lines_carry_the_trace_id_as_text_and_json(
    exported: InMemorySpanExporter, restore_root_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logging.getLogger("api.main")
    configure_logging("INFO", json_lines=False)
    with tracing.span("POST /upload"), task_context(3):
        trace_id = tracing.current_trace_id()
        log.info("traced")
    log.info("untraced")
    configure_logging("INFO", json_lines=True)
    with tracing.span("POST /upload"):
        json_trace_id = tracing.current_trace_id()
        log.info("traced")

    first, second, third = capsys.readouterr().err.splitlines()
    assert first.endswith(f"INFO api.main [task=3 trace={trace_id}]: traced")
    assert second.endswith("INFO api.main: untraced")
    assert json.loads(third)["trace_id"] == json_trace_id
    assert trace_id is not None and len(trace_id) == 32


def test_a_render_in_a_thread_records_its_steps_and_they_replay_under_the_current_span(
    exported: InMemorySpanExporter, tmp_path: Path
) -> None:
    folders = Folders(tmp_path / "uploads", tmp_path / "processed")
    folders.ensure_dirs()
    input_name = new_stored_name(".jpg")
    source = tmp_path / input_name
    source.write_bytes(images.jpeg(200, 100))
    processing = resolve(
        preset=None,
        ops=None,
        outputs='{"a": [{"op": "resize", "width": 50}, {"op": "blur", "radius": 1}], "b": "thumbnail"}',
        presets=BUILTIN_PRESETS,
        watermark_text="x",
    )
    settings = RenderSettings(
        limits=RenderLimits(max_pixels=10_000_000, max_frames=10, max_output_pixels=10_000_000),
        encoder=EncoderSettings(),
        record_steps=True,
    )
    rendered = render_task(folders, settings, source, input_name, processing)

    with tracing.span("render") as render:
        tracing.replay(rendered.steps)
    spans = {
        (span.name, (span.attributes or {}).get("imagequeue.output")): span
        for span in exported.get_finished_spans()
    }
    under_render = sorted(
        key
        for key, span in spans.items()
        if span.parent and span.parent.span_id == render.get_span_context().span_id
    )
    assert under_render == [("decode", None), ("encode", "a"), ("encode", "b"), ("ops", "a"), ("ops", "b")]
    ops_a = spans[("ops", "a")]
    steps_of_a = [
        span
        for span in exported.get_finished_spans()
        if span.parent and span.parent.span_id == ops_a.context.span_id
    ]
    assert [span.name for span in sorted(steps_of_a, key=lambda s: s.start_time or 0)] == [
        "op resize",
        "op blur",
    ]
    for span in exported.get_finished_spans():
        assert span.start_time is not None and span.end_time is not None and span.start_time <= span.end_time
    # Nothing stored by the job (no `place`): the worker stores, and traces that itself.
    assert ("store output", "a") not in spans


def test_the_steps_of_a_render_that_records_nothing_cost_no_list(tmp_path: Path) -> None:
    with tracing.recording_steps(False):
        assert tracing.step("decode") is tracing.step("encode")


@pytest.fixture
async def traced_app(exported: InMemorySpanExporter) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise HTTPException(status_code=503, detail="away")
        return {"id": item_id}

    transport = httpx.ASGITransport(app=ServerSpans(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_a_request_span_is_named_by_its_route_and_continues_the_client_trace(
    traced_app: httpx.AsyncClient, exported: InMemorySpanExporter
) -> None:
    assert (await traced_app.get("/items/5", headers={"traceparent": CLIENT_TRACEPARENT})).status_code == 200
    span = _named(exported, "GET /items/{item_id}")
    assert span.kind == SpanKind.SERVER
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE
    assert span.attributes is not None
    assert (span.attributes["http.route"], span.attributes["url.path"]) == ("/items/{item_id}", "/items/5")
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code == StatusCode.UNSET


async def test_a_5xx_answer_fails_the_span_and_a_bad_traceparent_starts_a_new_trace(
    traced_app: httpx.AsyncClient, exported: InMemorySpanExporter
) -> None:
    answer = await traced_app.get("/items/0", headers={"traceparent": "00-zz-not-a-context"})
    assert answer.status_code == 503
    span = _named(exported, "GET /items/{item_id}")
    assert span.parent is None and span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "503"
