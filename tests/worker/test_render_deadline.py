"""Heavy renders: a child process of their own, killed at RENDER_TIMEOUT_SECONDS, the task failed at
its first attempt; light renders go on beside them. Run against the real API, PostgreSQL and NATS."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession

from config import get_settings
from core.models import ImageTask
from core.processing.cost import render_pixels
from core.processing.forms import resolve
from core.processing.outputs import Processing
from core.processing.presets import BUILTIN_PRESETS
from core.storage.base import TEMP_PREFIX
from tests import images
from tests.waiting import final_row, task_row, task_row_when
from tests.worker.in_process import Worker
from worker.consumer import TOO_SLOW

TIMEOUT = 3.0
# Twenty blurs of a 9 MP picture: the cost check admits them (no step grows the picture), and they
# take well over TIMEOUT on any machine (about 40 ns a pixel and step).
SLOW_SIZE = (3000, 3000)
SLOW_OPS = [{"op": "blur", "radius": 50}] * 20
# Leeway past the deadline for killing the child, recording and the test's polling.
LEEWAY = 5.0


async def upload(client: httpx.AsyncClient, data: bytes, **form: str) -> int:
    response = await client.post(
        "/upload", files={"file": ("photo.jpg", data, "application/octet-stream")}, data=form
    )
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def _outcome(row: ImageTask) -> tuple[str, int, str | None]:
    return (row.status, row.attempts, row.error)


def _processing(ops: str | None = None) -> Processing:
    return resolve(preset=None, ops=ops, outputs=None, presets=BUILTIN_PRESETS, watermark_text="x")


def test_the_slow_render_is_estimated_heavy_and_a_normal_one_light() -> None:
    heavy = get_settings().heavy_render_pixels
    assert render_pixels(_processing(json.dumps(SLOW_OPS)), *SLOW_SIZE, 1, "JPEG") > heavy
    assert render_pixels(_processing(), 640, 480, 1, "JPEG") < heavy


async def test_a_render_past_its_deadline_is_killed_and_fails_at_once_while_light_ones_go_on(
    client: httpx.AsyncClient, db: AsyncSession, worker: Worker, processed_dir: Path
) -> None:
    # Two slow uploads, as many as the worker's render slots: they take turns in the heavy lane,
    # and a normal upload goes on beside them.
    async with worker(render_timeout_seconds=TIMEOUT):
        slow = await upload(client, images.jpeg(*SLOW_SIZE), ops=json.dumps(SLOW_OPS))
        started = await task_row_when(db, slow, lambda row: row.status == "processing", what="processing")
        started_attempts = started.attempts  # read now: the next reads expire the row
        began = time.monotonic()
        second = await upload(client, images.jpeg(*SLOW_SIZE), ops=json.dumps(SLOW_OPS))
        normal = await upload(client, images.jpeg(640, 480))

        done = await final_row(db, normal)
        assert done.status == "done", done.error
        slow_meanwhile = (await task_row(db, slow)).status
        failed = _outcome(await final_row(db, slow, timeout=TIMEOUT + LEEWAY))
        elapsed = time.monotonic() - began
        second_failed = _outcome(await final_row(db, second, timeout=TIMEOUT + LEEWAY))
        second_elapsed = time.monotonic() - began

    assert started_attempts == 1
    assert slow_meanwhile == "processing", "the normal upload did not wait for the slow one"
    # Too slow is deterministic (no second attempt), and waiting for the lane costs no attempt.
    assert failed == second_failed == ("failed", 1, TOO_SLOW.format(seconds=TIMEOUT))
    assert elapsed < TIMEOUT + LEEWAY
    assert second_elapsed < 2 * TIMEOUT + LEEWAY
    assert not list(processed_dir.glob(f"{TEMP_PREFIX}*")), "the killed render's partial output is removed"


async def test_a_heavy_render_within_its_deadline_is_done_in_its_own_process(
    client: httpx.AsyncClient, db: AsyncSession, worker: Worker
) -> None:
    # Every render counts as heavy here: the child process's path, end to end.
    async with worker(heavy_render_pixels=1):
        task_id = await upload(client, images.jpeg(640, 480))
        task = await final_row(db, task_id)

    assert (task.status, task.attempts, task.error) == ("done", 1, None)
    response = await client.get((await client.get(f"/status/{task_id}")).json()["processed_url"])
    assert Image.open(io.BytesIO(response.content)).size == (640, 480)
