"""GET /metrics on the real API process: upload outcomes, tasks by status, the queue's depth, and
an API whose database and NATS are unreachable still answering the scrape.

No worker runs in this module, so what the tests queue stays queued and the figures hold still.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import Message, Receive, Scope, Send

from api.metrics import SCRAPE_TIMEOUT_SECONDS, ApiMetrics, UploadCounter
from config import get_settings
from core import queue
from core.models import ImageTask, TaskStatus
from devstack.servers import free_port
from devstack.stack import start_api, stop_process
from tests import images
from tests.waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled counter not created yet."""
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def upload(client: httpx.AsyncClient, data: bytes, name: str = "m.jpg", **kwargs) -> httpx.Response:
    return await client.post("/upload", files={"file": (name, data, "image/jpeg")}, **kwargs)


@pytest.fixture
async def consumer(stack_env: dict[str, str]) -> AsyncIterator[None]:
    """The durable consumer, as a worker creates it (the queue's depth is the consumer's count)."""
    connection = await nats.connect(stack_env["NATS_URL"])
    try:
        policy = queue.ConsumerPolicy(get_settings().ack_wait_seconds)
        await queue.ensure_stream(connection.jetstream())
        await queue.ensure_consumer(connection.jetstream(), policy)
        yield
    finally:
        await connection.close()


async def test_metrics_is_served_in_prometheus_text_and_left_out_of_the_api_schema(
    client: httpx.AsyncClient,
) -> None:
    found = await scrape(client)

    assert ("process_cpu_seconds_total", frozenset()) in found
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_uploads_are_counted_by_outcome_and_code(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    key = {"Idempotency-Key": f"metrics-{uuid.uuid4().hex}"}
    photo = images.jpeg()

    assert (await upload(client, photo, headers=key)).status_code == 200
    assert (await upload(client, photo, headers=key)).headers["idempotent-replayed"] == "true"
    assert (await upload(client, images.png(), headers={"Accept": "text/html"})).status_code == 303
    assert (await upload(client, b"just some words\n", "notes.txt")).status_code == 415
    assert (await upload(client, b"")).status_code == 400
    assert (await client.get("/status/1")).status_code in (200, 404), "other paths are not counted"
    after = await scrape(client)

    def moved(outcome: str, code: str) -> float:
        name = "imagequeue_uploads_total"
        return value(after, name, outcome=outcome, code=code) - value(
            before, name, outcome=outcome, code=code
        )

    assert moved("accepted", "200") == 1
    assert moved("accepted", "303") == 1
    assert moved("replayed", "200") == 1
    assert moved("refused", "415") == 1
    assert moved("refused", "400") == 1
    assert moved("unavailable", "503") == 0


async def test_tasks_by_status_are_the_rows_the_database_holds(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    before = await scrape(client)
    assert (await upload(client, images.jpeg())).status_code == 200
    after = await scrape(client)

    db.expire_all()
    rows = dict((await db.execute(select(ImageTask.status, func.count()).group_by(ImageTask.status))).all())
    assert value(after, "imagequeue_database_up") == 1
    for status in TaskStatus:
        assert value(after, "imagequeue_tasks", status=status.value) == rows.get(status.value, 0), status
    pending = value(after, "imagequeue_tasks", status="pending") - value(
        before, "imagequeue_tasks", status="pending"
    )
    assert pending == 1


async def test_queue_depth_grows_while_no_worker_takes_the_tasks(
    client: httpx.AsyncClient, consumer: None
) -> None:
    before = await scrape(client)
    assert value(before, "imagequeue_nats_up") == 1
    depth_before = value(before, "imagequeue_queue_pending")
    for _ in range(3):
        assert (await upload(client, images.jpeg())).status_code == 200

    async def three_more() -> bool:
        found = await scrape(client)
        return value(found, "imagequeue_queue_pending") == depth_before + 3

    await eventually(three_more, timeout=10, what="imagequeue_queue_pending up by 3")
    found = await scrape(client)
    # Compared with before, not with 0: a message an earlier module's worker held when it stopped
    # can still be counted (the suite's modules share the stream, and run in any order).
    ack_pending_before = value(before, "imagequeue_queue_ack_pending")
    assert value(found, "imagequeue_queue_ack_pending") == ack_pending_before, "nobody took them"
    assert ("imagequeue_queue_redelivered", frozenset()) in found


async def test_an_api_whose_database_and_nats_are_unreachable_still_answers_the_scrape(
    stack_env: dict[str, str], workdir: Path
) -> None:
    # Ports nothing listens on: refused at once, exactly as a stopped server refuses.
    env = {
        **stack_env,
        "DATABASE_URL": f"postgresql+asyncpg://postgres:postgres@127.0.0.1:{free_port()}/imagequeue",
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }
    port = free_port()
    log_file = workdir / "metrics-api-unreachable.log"
    process = start_api(env, port, log_file=log_file)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def serving() -> bool:
                assert process.poll() is None, log_file.read_text()[-3000:]
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(serving, timeout=30, what="the API answering /health")
            started = time.monotonic()
            found = await scrape(http)
            elapsed = time.monotonic() - started
    finally:
        stop_process(process)

    assert value(found, "imagequeue_database_up") == 0
    assert value(found, "imagequeue_nats_up") == 0
    assert not any(name == "imagequeue_tasks" for name, _ in found), "no made-up task counts"
    assert not any(name.startswith("imagequeue_queue_") for name, _ in found)
    assert elapsed < SCRAPE_TIMEOUT_SECONDS + 1


def _asgi_answering(status: int, headers: list[tuple[bytes, bytes]]) -> UploadCounter:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return UploadCounter(app, ApiMetrics())


async def _call(counter: UploadCounter, path: str = "/upload", method: str = "POST") -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    await counter(scope, receive, send)


def _counted(counter: UploadCounter) -> Samples:
    found = parse(generate_latest(counter.metrics.registry).decode())
    return {key: count for key, count in found.items() if key[0] == "imagequeue_uploads_total"}


async def test_the_counter_sorts_answers_it_did_not_see_in_the_live_tests() -> None:
    unavailable = _asgi_answering(503, [(b"retry-after", b"5")])
    await _call(unavailable)
    await _call(unavailable, path="/status/1", method="GET")
    assert _counted(unavailable) == {
        ("imagequeue_uploads_total", frozenset({("outcome", "unavailable"), ("code", "503")})): 1
    }

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    crashed = UploadCounter(broken, ApiMetrics())
    with pytest.raises(RuntimeError):
        await _call(crashed)
    assert _counted(crashed) == {
        ("imagequeue_uploads_total", frozenset({("outcome", "unavailable"), ("code", "500")})): 1
    }
