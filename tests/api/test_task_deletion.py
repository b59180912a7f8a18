"""DELETE /tasks/{task_id} in every state a task reaches through the API: 204 and gone (files too),
then 404; never a 500. (The fuzz run once met a 500 here: tests/api/test_task_resource.py has the
row whose file name was never ours.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from tests import images
from tests.api.test_reprocess import SLOW_OPS, Workers
from tests.waiting import eventually, final_status, task_row, task_row_when


@pytest.fixture
def workers(stack_env: dict[str, str], workdir: Path) -> Iterator[Workers]:
    started = Workers(stack_env, workdir / "deletion-worker.log")
    yield started
    started.stop_all()


async def _upload(client: httpx.AsyncClient, size: tuple[int, int] = (200, 150), **data: str) -> int:
    posted = await client.post(
        "/upload", files={"file": ("d.jpg", images.jpeg(*size), "image/jpeg")}, data=data
    )
    assert posted.status_code == 200, posted.text
    return posted.json()["task_id"]


async def _done(client: httpx.AsyncClient) -> int:
    task_id = await _upload(client, preset="thumbnail")
    assert (await final_status(client, task_id))["status"] == "done"
    return task_id


async def _deleted(client: httpx.AsyncClient, db: AsyncSession, task_id: int, *files: Path) -> None:
    answer = await client.delete(f"/tasks/{task_id}")
    assert answer.status_code == 204, answer.text
    assert (await client.get(f"/tasks/{task_id}")).status_code == 404
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 404
    db.expire_all()
    assert await db.get(ImageTask, task_id) is None
    for path in files:
        assert not path.exists(), path


async def test_a_pending_and_a_cancelled_task_are_deleted(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path
) -> None:
    pending = await _upload(client)
    cancelled = await _upload(client)
    assert (await client.post(f"/tasks/{cancelled}/cancel")).status_code == 200

    for task_id in (pending, cancelled):
        row = await task_row(db, task_id)
        await _deleted(client, db, task_id, uploads_dir / row.input_name)


async def test_a_task_being_processed_is_deleted(
    client: httpx.AsyncClient, db: AsyncSession, workers: Workers, uploads_dir: Path
) -> None:
    workers.start()
    # Big enough to be rendering for seconds (as in tests/faults/test_worker_paused.py): a small
    # one went from pending to done between two looks.
    task_id = await _upload(client, (3000, 3000), ops=json.dumps(SLOW_OPS))
    row = await task_row_when(
        db, task_id, lambda task: task.status == "processing", timeout=60, what="processing"
    )

    await _deleted(client, db, task_id, uploads_dir / row.input_name)


async def test_a_task_awaiting_its_reprocess_is_deleted_with_old_and_new_files(
    client: httpx.AsyncClient, db: AsyncSession, workers: Workers, uploads_dir: Path, processed_dir: Path
) -> None:
    workers.start()
    task_id = await _done(client)
    workers.stop_all()  # the reprocess waits, its old outputs still served
    answer = await client.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"})
    assert answer.status_code == 202, answer.text
    row = await task_row(db, task_id)
    files = [uploads_dir / row.input_name, *(processed_dir / o["file"] for o in row.outputs or ())]

    await _deleted(client, db, task_id, *files)


async def test_a_task_of_a_running_bulk_job_is_deleted_and_the_job_still_reads(
    client: httpx.AsyncClient, db: AsyncSession, workers: Workers, uploads_dir: Path
) -> None:
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    workers.start()
    task_id = await _done(client)
    workers.stop_all()
    made = await client.post(
        "/tasks/reprocess", json={"where": {"uploaded_after": since}, "preset": "thumbnail"}
    )
    assert made.status_code == 202, made.text
    job_id = made.json()["job_id"]
    row = await task_row(db, task_id)

    await _deleted(client, db, task_id, uploads_dir / row.input_name)

    async def job_reads() -> bool:
        return (await client.get(f"/jobs/{job_id}")).status_code == 200

    await eventually(job_reads, timeout=10, what="the job to read after its task went")
    assert (await client.post(f"/jobs/{job_id}/cancel")).status_code in (200, 409)
