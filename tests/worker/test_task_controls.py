"""Retry and cancel as a worker meets them (real API, PostgreSQL, NATS; the worker in this process):
a retried task runs again, a cancelled pending one never runs, a cancelled render is abandoned at
the next heartbeat and nothing it made stays."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from core.storage.base import TEMP_PREFIX
from tests import images
from tests.waiting import eventually, final_row, task_row, task_row_when
from tests.worker.in_process import Worker

# Blurs of a 9 MP picture: seconds of work on any machine (about 40 ns a pixel and step).
SLOW_SIZE = (3000, 3000)
HEAVY_OPS = [{"op": "blur", "radius": 50}] * 20
LIGHT_OPS = [{"op": "blur", "radius": 50}] * 6
# ACK_WAIT_SECONDS is 5 in the tests: a heartbeat every 1.7 s; then the kill and the next claim.
ABANDONED_WITHIN = 8.0


async def upload(client: httpx.AsyncClient, data: bytes, **form: str) -> int:
    response = await client.post("/upload", files={"file": ("c.jpg", data, "image/jpeg")}, data=form)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def outputs_of(processed_dir: Path, row: ImageTask) -> list[Path]:
    return sorted(processed_dir.glob(f"{Path(row.input_name).stem}*"))


async def test_a_retried_task_runs_again_at_once_from_its_original(
    client: httpx.AsyncClient, db: AsyncSession, worker: Worker
) -> None:
    async with worker():
        task_id = await upload(client, images.jpeg(64, 48))
        assert (await final_row(db, task_id)).status == "done"
        # Failed, as far as the row says, within JetStream's duplicate window of its first message:
        # the retry's message must not be taken for a copy of it.
        await db.execute(
            update(ImageTask).where(ImageTask.id == task_id).values(status="failed", error="x", attempts=3)
        )
        await db.commit()

        response = await client.post(f"/tasks/{task_id}/retry")
        assert response.status_code == 202, response.text
        row = await final_row(db, task_id, timeout=20)

    assert (row.status, row.attempts, row.error, row.retries) == ("done", 1, None, 1)
    status = (await client.get(f"/status/{task_id}")).json()
    assert (await client.get(status["processed_url"])).status_code == 200


async def test_a_cancelled_pending_task_never_runs(
    client: httpx.AsyncClient, db: AsyncSession, worker: Worker
) -> None:
    # No worker yet: the task waits in the queue, and is cancelled there.
    task_id = await upload(client, images.jpeg(64, 48))
    assert (await client.post(f"/tasks/{task_id}/cancel")).status_code == 200

    async with worker():
        # A task queued after it: once it is done, the worker has met the cancelled one's message.
        after = await upload(client, images.jpeg(64, 48))
        assert (await final_row(db, after)).status == "done"

    row = await task_row(db, task_id)
    assert (row.status, row.attempts, row.started_at, row.outputs) == ("cancelled", 0, None, None)


async def test_a_cancelled_heavy_render_is_killed_at_the_next_heartbeat_and_leaves_nothing(
    client: httpx.AsyncClient, db: AsyncSession, worker: Worker, processed_dir: Path
) -> None:
    async with worker():
        slow = await upload(client, images.jpeg(*SLOW_SIZE), ops=json.dumps(HEAVY_OPS))
        await task_row_when(db, slow, lambda row: row.status == "processing", what="processing")
        # Another heavy task waits for the heavy lane, which the cancelled render frees.
        waiting = await upload(client, images.jpeg(*SLOW_SIZE), ops=json.dumps(HEAVY_OPS))

        cancelled_at = time.monotonic()
        response = await client.post(f"/tasks/{slow}/cancel")
        assert (response.status_code, response.json()["status"]) == (200, "cancelled")
        await task_row_when(db, waiting, lambda row: row.status == "processing", what="processing")
        freed_after = time.monotonic() - cancelled_at
        assert (await client.post(f"/tasks/{waiting}/cancel")).status_code == 200
        await task_row_when(
            db, waiting, lambda row: row.status == "cancelled", what="cancelled", timeout=ABANDONED_WITHIN
        )

    assert freed_after < ABANDONED_WITHIN, "the cancelled render was not abandoned at a heartbeat"
    row = await task_row(db, slow)
    assert (row.status, row.attempts, row.outputs) == ("cancelled", 1, None)
    assert outputs_of(processed_dir, row) == []
    assert not list(processed_dir.glob(f"{TEMP_PREFIX}*")), "the killed render's temporary files are gone"


async def test_a_cancelled_light_render_ends_and_its_outputs_are_removed(
    client: httpx.AsyncClient,
    db: AsyncSession,
    worker: Worker,
    processed_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="worker.consumer")
    # Never heavy here: the render runs in a thread, which cannot be stopped, to its end.
    async with worker(heavy_render_pixels=10**12):
        task_id = await upload(client, images.jpeg(*SLOW_SIZE), ops=json.dumps(LIGHT_OPS))
        await task_row_when(db, task_id, lambda row: row.status == "processing", what="processing")
        assert (await client.post(f"/tasks/{task_id}/cancel")).status_code == 200

        removed = f"task {task_id} was cancelled meanwhile; its outputs are removed"
        await eventually(lambda: _logged(caplog, removed), timeout=60, what=removed)

    row = await task_row(db, task_id)
    assert (row.status, row.outputs, row.output_name) == ("cancelled", None, None)
    assert outputs_of(processed_dir, row) == []


async def test_a_render_cancelled_then_reprocessed_leaves_only_the_new_outputs(
    client: httpx.AsyncClient,
    db: AsyncSession,
    worker: Worker,
    processed_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="worker.consumer")
    async with worker(heavy_render_pixels=10**12):
        task_id = await upload(client, images.jpeg(*SLOW_SIZE), ops=json.dumps(LIGHT_OPS))
        await task_row_when(db, task_id, lambda row: row.status == "processing", what="processing")
        assert (await client.post(f"/tasks/{task_id}/cancel")).status_code == 200
        reprocessed = await client.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"})
        assert reprocessed.status_code == 202, reprocessed.text

        removed = f"task {task_id} was reprocessed meanwhile; this run's outputs are removed"
        await eventually(lambda: _logged(caplog, removed), timeout=60, what=removed)
        row = await final_row(db, task_id, timeout=60)

    assert row.status == "done"
    assert [path.name for path in outputs_of(processed_dir, row)] == sorted(
        output["file"] for output in row.outputs or ()
    )


async def _logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    return message in caplog.text


TWO_OUTPUTS = {
    "small": [{"op": "resize", "width": 64, "height": 48}],
    "large": [{"op": "resize", "width": 1600, "height": 1200}],
}


async def test_a_retry_of_the_failed_outputs_makes_only_those_and_keeps_the_others(
    client: httpx.AsyncClient, db: AsyncSession, worker: Worker, processed_dir: Path
) -> None:
    # This worker refuses the large output (an operator's lower MAX_OUTPUT_PIXELS); the small one
    # is made all the same, and kept.
    async with worker(max_output_pixels=1_000_000):
        task_id = await upload(client, images.jpeg(1600, 1200), outputs=json.dumps(TWO_OUTPUTS))
        failed = await final_row(db, task_id)
    assert failed.status == "failed"
    assert failed.error is not None and "1 of 2 outputs could not be made (large: " in failed.error
    assert failed.partial_outputs is not None
    (small,) = failed.partial_outputs["made"]
    assert [item["name"] for item in failed.partial_outputs["failed"]] == ["large"]
    small_file = processed_dir / small["file"]
    made_at = small_file.stat().st_mtime_ns

    # The limit raised again: only the large one is made now.
    async with worker():
        response = await client.post(f"/tasks/{task_id}/retry", params={"outputs": "failed"})
        assert response.status_code == 202, response.text
        done = await final_row(db, task_id)

    assert (done.status, done.attempts, done.partial_outputs) == ("done", 1, None)
    assert done.outputs is not None
    assert [output["name"] for output in done.outputs] == ["small", "large"]
    assert done.outputs[0] == small, "the kept output is recorded as it was"
    assert small_file.stat().st_mtime_ns == made_at, "the kept output was not made again"
    status = (await client.get(f"/status/{task_id}")).json()
    assert [(output["width"], output["height"]) for output in status["outputs"]] == [(64, 48), (1600, 1200)]
    for output in status["outputs"]:
        assert (await client.get(output["url"])).status_code == 200


async def test_a_whole_retry_makes_every_output_again(
    client: httpx.AsyncClient, db: AsyncSession, worker: Worker
) -> None:
    async with worker(max_output_pixels=1_000_000):
        task_id = await upload(client, images.jpeg(1600, 1200), outputs=json.dumps(TWO_OUTPUTS))
        assert (await final_row(db, task_id)).status == "failed"
    async with worker():
        assert (await client.post(f"/tasks/{task_id}/retry")).status_code == 202
        done = await final_row(db, task_id)

    assert (done.status, done.partial_outputs) == ("done", None)
    assert [output["name"] for output in done.outputs or ()] == ["small", "large"]
