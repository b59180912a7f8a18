"""OpenTelemetry traces end to end: the API and a worker (a pool of child processes) export to a real
OTLP/HTTP receiver run here, and one task's trace holds every step, each under the right parent.

A stack of its own (PostgreSQL, NATS, API, worker): no other API's relay or worker may take this
module's messages, which would make spans appear in another trace or in none.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import nats
import pytest
from sqlalchemy import text

from core import queue
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, running_api, worker_process
from tests import images
from tests.conftest import TEST_SETTINGS
from tests.database import session_on
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.waiting import eventually

OUTPUTS = {
    "small": [{"op": "resize", "width": 64, "height": 64}, {"op": "grayscale"}],
    "turned": [{"op": "rotate", "degrees": 90}, {"op": "format", "format": "png"}],
}
PUBLISH = f"publish {queue.SUBJECT}"
PROCESS = f"process {queue.SUBJECT}"


@dataclass
class Hooks:
    """The callback receiver: the headers of every POST it got."""

    url: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Stack:
    base_url: str
    env: dict[str, str]
    receiver: OtlpReceiver
    hooks: Hooks
    worker_log: Path


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    found = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            found.headers.append(dict(self.headers))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hook?token=secret-token"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced(workdir: Path, hooks: Hooks) -> Iterator[Stack]:
    workdir = workdir / "traces"
    servers = LocalServers(workdir / "servers", nats_port=free_port())
    servers.start()
    try:
        migrate(servers.postgres.url())
        with otlp_receiver() as receiver:
            env = servers.environment(
                UPLOADS_DIR=str(workdir / "uploads"),
                PROCESSED_DIR=str(workdir / "processed"),
                **TEST_SETTINGS,
                OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                # The SDK's own setting: export every 100 ms rather than every 5 s.
                OTEL_BSP_SCHEDULE_DELAY="100",
                # Child processes render: their steps must still reach the trace.
                WORKER_POOL="processes",
            )
            worker_log = workdir / "worker.log"
            with (
                running_api(env, log_file=workdir / "api.log") as base_url,
                worker_process(env, log_file=worker_log),
            ):
                yield Stack(base_url, env, receiver, hooks, worker_log)
    finally:
        servers.stop()


@pytest.fixture
async def client(traced: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=traced.base_url, timeout=30) as http:
        yield http


def _one(spans: list[ReceivedSpan], name: str, **where: object) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"{len(found)} spans named {name!r} {where}: {[s.name for s in spans]}"
    return found[0]


async def _upload_and_wait(client: httpx.AsyncClient, hooks: Hooks) -> tuple[int, dict]:
    answer = await client.post(
        "/upload",
        files={"file": ("photo.jpg", images.jpeg(320, 240), "image/jpeg")},
        data={"outputs": json.dumps(OUTPUTS), "callback_url": hooks.url},
    )
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["task_id"]
    status: dict = {}

    async def done() -> bool:
        nonlocal status
        status = (await client.get(f"/status/{task_id}")).json()
        assert status["status"] != "failed", status
        return status["status"] == "done"

    await eventually(done, what=f"task {task_id} done")
    return task_id, status


def _trace_of(receiver: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    return [span for span in receiver.received() if span.trace_id == trace_id]


async def _spans_arrive(
    receiver: OtlpReceiver, trace_id: str, *names: str, count: int = 1
) -> list[ReceivedSpan]:
    async def arrived() -> bool:
        seen = [span.name for span in _trace_of(receiver, trace_id)]
        return all(seen.count(name) >= count for name in names)

    await eventually(
        arrived, what=lambda: f"spans {names} in {[s.name for s in _trace_of(receiver, trace_id)]}"
    )
    return _trace_of(receiver, trace_id)


async def test_one_trace_holds_the_upload_publish_and_every_worker_step(
    traced: Stack, client: httpx.AsyncClient
) -> None:
    task_id, status = await _upload_and_wait(client, traced.hooks)
    trace_id = status["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    spans = await _spans_arrive(
        traced.receiver, trace_id, "POST /upload", PUBLISH, "queue wait", PROCESS, "finish", "POST"
    )

    upload = _one(spans, "POST /upload")
    assert (upload.service, upload.kind, upload.parent_id) == ("imagequeue-api", "server", "")
    assert upload.attributes["http.request.method"] == "POST"
    assert upload.attributes["http.route"] == "/upload"
    assert upload.attributes["http.response.status_code"] == 200
    assert upload.attributes["imagequeue.task_id"] == task_id

    publish = _one(spans, PUBLISH)
    assert (publish.service, publish.kind, publish.parent_id) == (
        "imagequeue-api",
        "producer",
        upload.span_id,
    )
    assert publish.attributes["messaging.system"] == "nats"
    assert publish.attributes["messaging.destination.name"] == queue.SUBJECT
    assert publish.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.message.id"] == queue.message_id(task_id, 0)
    assert publish.attributes["imagequeue.task_id"] == task_id

    # The worker's spans: under the publish span, as the issue asks.
    wait = _one(spans, "queue wait")
    process = _one(spans, PROCESS)
    for span in (wait, process):
        assert (span.service, span.parent_id) == ("imagequeue-worker", publish.span_id)
        assert span.attributes["imagequeue.task_id"] == task_id
    assert process.kind == "consumer"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["imagequeue.attempt"] == 1
    assert wait.start_ns >= publish.start_ns - 50_000_000 and wait.end_ns <= process.start_ns + 1_000_000

    children = {span.name: span for span in spans if span.parent_id == process.span_id}
    assert set(children) == {"claim", "fetch input", "render", "finish"}
    render = children["render"]
    # Rendered in a child process: its steps, replayed under `render`, with their real times.
    steps = [span for span in spans if span.parent_id == render.span_id]
    assert sorted(span.name for span in steps) == sorted(
        ["decode", "ops", "encode", "ops", "encode", "store output", "store output"]
    )
    for span in steps:
        assert render.start_ns <= span.start_ns <= span.end_ns <= render.end_ns, span
        assert span.service == "imagequeue-worker"
    for name, asked in OUTPUTS.items():
        ops = _of_output(steps, "ops", name)
        assert ops.attributes["imagequeue.frames"] == 1
        per_op = sorted((span for span in spans if span.parent_id == ops.span_id), key=lambda s: s.start_ns)
        assert [span.name for span in per_op] == [f"op {op['op']}" for op in asked]
        assert [span.attributes["imagequeue.op_index"] for span in per_op] == list(range(len(asked)))
        assert ops.end_ns <= _of_output(steps, "encode", name).start_ns
        _of_output(steps, "store output", name)
    assert _of_output(steps, "encode", "turned").attributes["imagequeue.format"] == "PNG"
    decode = _one(steps, "decode")
    assert decode.end_ns <= min(span.start_ns for span in steps if span.name == "ops")

    # The callback: sent by the API after the worker finished, in the same trace, under the upload.
    callback = _one(spans, "POST", kind="client")
    assert (callback.service, callback.parent_id) == ("imagequeue-api", upload.span_id)
    assert callback.attributes["http.response.status_code"] == 204
    assert callback.attributes["server.address"] == "127.0.0.1"
    assert callback.attributes["imagequeue.task_id"] == task_id
    assert all("secret-token" not in str(value) for value in callback.attributes.values())
    sent = [headers for headers in traced.hooks.headers if trace_id in headers.get("traceparent", "")]
    assert len(sent) == 1 and sent[0]["traceparent"].split("-")[2] == callback.span_id


def _of_output(spans: list[ReceivedSpan], name: str, output: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and s.attributes.get("imagequeue.output") == output]
    assert len(found) == 1, f"{len(found)} spans {name!r} of output {output!r}"
    return found[0]


async def test_a_later_publish_by_the_relay_joins_the_same_trace(
    traced: Stack, client: httpx.AsyncClient
) -> None:
    """A row put back in the queue (as the lease sweep does, or a publish the request missed) is
    published by the outbox relay under the upload's span, and processed again in that trace."""
    task_id, status = await _upload_and_wait(client, traced.hooks)
    trace_id = status["trace_id"]
    await _spans_arrive(traced.receiver, trace_id, PUBLISH, PROCESS)
    async with session_on(traced.env["DATABASE_URL"]) as session:
        await session.execute(
            text(
                "UPDATE image_tasks SET status = 'pending', queued_at = NULL, "
                "upload_time = now() - interval '1 minute' WHERE id = :id"
            ),
            {"id": task_id},
        )
        await session.commit()

    spans = await _spans_arrive(traced.receiver, trace_id, PUBLISH, PROCESS, "finish", count=2)
    upload = _one(spans, "POST /upload")
    publishes = sorted((s for s in spans if s.name == PUBLISH), key=lambda s: s.start_ns)
    assert [s.parent_id for s in publishes] == [upload.span_id, upload.span_id]
    assert [s.attributes["messaging.message.id"] for s in publishes] == [
        queue.message_id(task_id, 0),
        queue.message_id(task_id, 1),
    ]
    processes = sorted((s for s in spans if s.name == PROCESS), key=lambda s: s.start_ns)
    assert [s.parent_id for s in processes] == [p.span_id for p in publishes]
    assert processes[1].attributes["imagequeue.attempt"] == 2


async def test_the_worker_logs_the_trace_of_the_message_it_handles(
    traced: Stack, client: httpx.AsyncClient
) -> None:
    """A redelivered message of a finished task: the worker's log line names its trace."""
    task_id, status = await _upload_and_wait(client, traced.hooks)
    trace_id = status["trace_id"]
    publish = _one(await _spans_arrive(traced.receiver, trace_id, PUBLISH), PUBLISH)
    connection = await nats.connect(traced.env["NATS_URL"])
    try:
        await connection.jetstream().publish(
            queue.SUBJECT,
            str(task_id).encode(),
            headers={"Nats-Msg-Id": f"again-{task_id}", "traceparent": f"00-{trace_id}-{publish.span_id}-01"},
        )
    finally:
        await connection.close()
    line = f"[task={task_id} trace={trace_id}]: task {task_id} is already done; acknowledging a redelivery"

    async def logged() -> bool:
        return line in traced.worker_log.read_text(errors="replace")

    await eventually(logged, what=f"{line!r} in the worker's log")


async def test_status_has_no_trace_id_for_an_untraced_upload(api_process: str) -> None:
    """The suite's own API runs without OTEL_EXPORTER_OTLP_ENDPOINT: no trace, so `trace_id` null."""
    async with httpx.AsyncClient(base_url=api_process, timeout=30) as plain:
        answer = await plain.post("/upload", files={"file": ("p.png", images.png(), "image/png")})
        assert answer.status_code == 200, answer.text
        status = (await plain.get(f"/status/{answer.json()['task_id']}")).json()
    assert status["trace_id"] is None


async def test_a_task_that_fails_marks_the_span_it_failed_in(
    traced: Stack, client: httpx.AsyncClient
) -> None:
    answer = await client.post("/upload", files={"file": ("cut.jpg", images.truncated_jpeg(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["task_id"]
    status: dict = {}

    async def failed() -> bool:
        nonlocal status
        status = (await client.get(f"/status/{task_id}")).json()
        return status["status"] == "failed"

    await eventually(failed, what=f"task {task_id} failed")
    spans = await _spans_arrive(traced.receiver, status["trace_id"], PROCESS, "render")
    render = _one(spans, "render")
    assert render.error and render.parent_id == _one(spans, PROCESS).span_id
    assert not [span for span in spans if span.parent_id == render.span_id]  # no steps: it raised
