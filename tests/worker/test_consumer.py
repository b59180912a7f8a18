"""The worker's loop and ack policy, run in this process against the real API, PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from nats.js import JetStreamContext
from PIL import Image
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from config import get_settings
from core import queue
from core.models import ImageTask
from tests import images
from tests.waiting import eventually, final_row, task_row
from worker.__main__ import run
from worker.consumer import GAVE_UP, INPUT_MISSING


@pytest.fixture
async def worker(stack_env: dict[str, str]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(get_settings(), stop))
    yield
    stop.set()
    await asyncio.wait_for(task, 30)


@pytest.fixture
async def js(stack_env: dict[str, str]) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(stack_env["NATS_URL"])
    yield nc.jetstream()
    await nc.close()


async def wait_queue_settled(js: JetStreamContext) -> None:
    async def settled() -> bool:
        info = await js.consumer_info(queue.STREAM, queue.DURABLE)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(settled, what="every message acknowledged or terminated")


async def upload(client: httpx.AsyncClient, data: bytes, name: str = "photo.jpg") -> int:
    response = await client.post("/upload", files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def test_an_upload_is_processed_into_a_watermarked_image(
    client: httpx.AsyncClient, db: AsyncSession, worker: None
) -> None:
    task_id = await upload(client, images.jpeg(640, 480))

    task = await final_row(db, task_id)

    assert task.status == "done", task.error
    assert (task.attempts, task.error) == (1, None)
    assert task.started_at is not None and task.finished_at is not None
    assert task.started_at <= task.finished_at
    status = (await client.get(f"/status/{task_id}")).json()
    response = await client.get(status["processed_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-content-type-options"] == "nosniff"
    output = Image.open(io.BytesIO(response.content))
    assert (output.format, output.size) == ("JPEG", (640, 480))
    assert images.red_share(output, (0, 0, 320, 80)) > 0.01, "the red text is near the top-left corner"
    assert images.red_share(output, (320, 240, 640, 480)) == 0, "the rest of the picture is untouched"


async def test_an_undecodable_image_fails_once_with_a_reason(
    client: httpx.AsyncClient, db: AsyncSession, js: JetStreamContext, worker: None
) -> None:
    task_id = await upload(client, images.truncated_jpeg(), "cut.jpg")

    task = await final_row(db, task_id)
    await wait_queue_settled(js)

    assert task.status == "failed"
    assert task.error and "damaged" in task.error
    assert task.output_name is None
    assert (await task_row(db, task_id)).attempts == 1, "a bad image is terminated, not redelivered"


async def test_a_task_that_fails_after_its_input_decoded_keeps_its_placeholder(
    client: httpx.AsyncClient, db: AsyncSession, worker: None
) -> None:
    # Refused at the encode (no quality fits 100 bytes), well within the placeholder's write delay:
    # the placeholder reported at the decode was dropped with the attempt, so a failed task had one
    # or not by how long it took to fail.
    ops = '[{"op": "format", "format": "jpeg", "max_bytes": 100}]'
    response = await client.post(
        "/upload", files={"file": ("noise.png", images.png(64, 48), "image/png")}, data={"ops": ops}
    )
    assert response.status_code == 200, response.text

    task = await final_row(db, response.json()["task_id"])

    assert task.status == "failed" and task.error and "max_bytes" in task.error
    assert task.placeholder is not None
    assert (task.placeholder["width"], task.placeholder["height"]) == (64, 48)


async def test_a_redelivered_message_for_a_done_task_changes_nothing(
    client: httpx.AsyncClient,
    db: AsyncSession,
    js: JetStreamContext,
    processed_dir: Path,
    worker: None,
) -> None:
    task_id = await upload(client, images.jpeg(200, 150))
    done = await final_row(db, task_id)
    assert done.status == "done" and done.output_name is not None
    output = processed_dir / done.output_name
    written = output.stat().st_mtime_ns
    outputs_before = sorted(processed_dir.iterdir())

    # The same task id again, as after a lost ack (a new message id so JetStream stores it).
    await js.publish(queue.SUBJECT, str(task_id).encode(), headers={"Nats-Msg-Id": f"again-{task_id}"})
    await wait_queue_settled(js)

    again = await task_row(db, task_id)
    assert (again.status, again.attempts, again.finished_at) == ("done", 1, done.finished_at)
    assert output.stat().st_mtime_ns == written
    assert sorted(processed_dir.iterdir()) == outputs_before


async def test_messages_that_are_not_tasks_are_dropped_and_the_worker_goes_on(
    client: httpx.AsyncClient, db: AsyncSession, js: JetStreamContext, worker: None
) -> None:
    await js.publish(queue.SUBJECT, b"not-a-task-id")
    await js.publish(queue.SUBJECT, b"2147480000")  # a well-formed id with no row behind it
    await wait_queue_settled(js)

    task_id = await upload(client, images.jpeg())

    assert (await final_row(db, task_id)).status == "done"


async def test_a_missing_input_file_fails_the_task_with_a_reason(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path, stack_env: dict[str, str]
) -> None:
    task_id = await upload(client, images.jpeg())
    task = await task_row(db, task_id)
    (uploads_dir / task.input_name).unlink()

    stop = asyncio.Event()
    worker_task = asyncio.create_task(run(get_settings(), stop))
    try:
        failed = await final_row(db, task_id)
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)

    assert (failed.status, failed.error) == ("failed", INPUT_MISSING)


async def test_a_task_whose_every_attempt_fails_ends_failed_after_max_attempts(
    client: httpx.AsyncClient,
    db: AsyncSession,
    js: JetStreamContext,
    stack_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A passing-looking fault that never passes (here: the output folder became a file)."""
    processed = tmp_path / "processed"
    settings = replace(get_settings(), processed_dir=processed)
    stop = asyncio.Event()
    worker_task = asyncio.create_task(run(settings, stop))
    try:

        async def fetching() -> bool:
            return (await js.consumer_info(queue.STREAM, queue.DURABLE)).num_waiting > 0

        await eventually(fetching, what="the worker waiting for messages")
        # Not rmdir(): the worker may already have rendered tasks an earlier module left queued.
        shutil.rmtree(processed)
        processed.write_bytes(b"not a folder")
        task_id = await upload(client, images.jpeg())
        task = await final_row(db, task_id)
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)

    assert task.status == "failed"
    assert task.attempts == settings.max_attempts
    assert task.error == GAVE_UP.format(attempts=settings.max_attempts, error="Not a directory")


async def test_a_task_leased_by_a_live_worker_is_turned_away_until_the_lease_runs_out(
    client: httpx.AsyncClient, db: AsyncSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease is the lock: a second copy of the message never starts a second render."""
    task_id = await upload(client, images.jpeg())
    held_until = datetime.now(UTC) + timedelta(hours=1)
    await db.execute(
        update(ImageTask)
        .where(ImageTask.id == task_id)
        .values(status="processing", attempts=1, started_at=func.now(), leased_until=held_until)
    )
    await db.commit()
    caplog.set_level(logging.INFO, logger="worker.consumer")

    stop = asyncio.Event()
    worker_task = asyncio.create_task(run(get_settings(), stop))
    try:

        async def turned_away() -> bool:
            return f"task {task_id} is being processed elsewhere" in caplog.text

        await eventually(turned_away, what="the message turned away while the lease is held")
        held = await task_row(db, task_id)
        assert (held.status, held.attempts, held.leased_until) == ("processing", 1, held_until)

        # The holder dies: its lease runs out, and the next delivery takes the task over.
        await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(leased_until=func.now()))
        await db.commit()
        done = await final_row(db, task_id)
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)

    assert (done.status, done.attempts) == ("done", 2)
