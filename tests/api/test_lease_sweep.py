"""The API's lease sweep: rows stuck in `processing` go back to the queue or end `failed`, and
temporary files left by killed processes are removed."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import queue
from core.models import INTERRUPTED_REASON, ImageTask, ReprocessJob, ReprocessJobTask
from core.processing.forms import resolve
from core.processing.presets import BUILTIN_PRESETS
from core.storage import new_stored_name
from tests import images
from tests.waiting import eventually, task_row_when

SWEEP_DEADLINE_SECONDS = 30  # the API sweeps every 6 s with the 60 s lease of the test settings


TWO_MINUTES_AGO = datetime.now(UTC) - timedelta(minutes=2)


async def last_message_id(stack_env: dict[str, str]) -> str | None:
    nc = await nats.connect(stack_env["NATS_URL"])
    try:
        message = await nc.jetstream().get_last_msg(queue.STREAM, queue.SUBJECT)
    finally:
        await nc.close()
    return (message.headers or {}).get("Nats-Msg-Id")


async def stuck_task(client: httpx.AsyncClient, db: AsyncSession, attempts: int) -> int:
    """A task whose worker 'died' two minutes ago, as a killed worker leaves its row."""
    task_id = (await client.post("/upload", files={"file": ("s.jpg", images.jpeg(), "image/jpeg")})).json()[
        "task_id"
    ]
    await db.execute(
        update(ImageTask)
        .where(ImageTask.id == task_id)
        .values(
            status="processing",
            attempts=attempts,
            started_at=TWO_MINUTES_AGO,
            queued_at=TWO_MINUTES_AGO,
            leased_until=datetime.now(UTC) - timedelta(seconds=1),
        )
    )
    await db.commit()
    return task_id


async def test_an_expired_lease_puts_the_task_back_in_the_queue(
    client: httpx.AsyncClient, db: AsyncSession, stack_env: dict[str, str]
) -> None:
    task_id = await stuck_task(client, db, attempts=1)

    task = await task_row_when(
        db,
        task_id,
        lambda task: (
            task.status == "pending" and task.queued_at is not None and task.queued_at > TWO_MINUTES_AGO
        ),
        timeout=SWEEP_DEADLINE_SECONDS,
        what="pending and queued again",
    )

    assert task.attempts == 1 and task.error is None
    assert await last_message_id(stack_env) == queue.message_id(task_id, 1), "a new message, not a copy"


async def test_a_task_out_of_attempts_fails_with_a_reason(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await stuck_task(client, db, attempts=3)

    task = await task_row_when(
        db, task_id, lambda task: task.status == "failed", timeout=SWEEP_DEADLINE_SECONDS, what="failed"
    )

    assert task.error == INTERRUPTED_REASON.format(attempts=3)
    assert task.finished_at is not None


async def test_stale_temporary_files_are_removed_and_fresh_ones_kept(
    client: httpx.AsyncClient, uploads_dir: Path, processed_dir: Path
) -> None:
    processed_dir.mkdir(parents=True, exist_ok=True)
    stale = [uploads_dir / ".partial-stale-upload", processed_dir / ".partial-stale-output"]
    fresh = processed_dir / ".partial-being-written"
    for path in [*stale, fresh]:
        path.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    for path in stale:
        os.utime(path, (an_hour_ago, an_hour_ago))

    async def stale_removed() -> bool:
        return not any(path.exists() for path in stale)

    await eventually(stale_removed, timeout=SWEEP_DEADLINE_SECONDS, what="stale temporary files removed")
    assert fresh.exists()
    fresh.unlink()


async def test_a_queued_task_whose_message_was_lost_is_queued_again_once_the_queue_is_idle(
    db: AsyncSession, stack_env: dict[str, str], uploads_dir: Path
) -> None:
    """As after a NATS crash that lost its file store: the row says queued, the stream has nothing."""
    data = images.jpeg()
    input_name = new_stored_name(".jpg")
    (uploads_dir / input_name).write_bytes(data)
    task = ImageTask(
        filename="lost.jpg",
        content_type="image/jpeg",
        size_bytes=len(data),
        width=320,
        height=240,
        sha256=hashlib.sha256(data).hexdigest(),
        input_name=input_name,
        processing=resolve(
            preset=None, ops=None, outputs=None, presets=BUILTIN_PRESETS, watermark_text="lost"
        ).to_json(),
        queued_at=TWO_MINUTES_AGO,
    )
    db.add(task)
    # Every other task still waiting was queued "just now" as far as the sweep can tell.
    await db.execute(update(ImageTask).where(ImageTask.status == "pending").values(queued_at=func.now()))
    await db.commit()
    task_id = task.id
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(queued_at=TWO_MINUTES_AGO))
    await db.commit()
    nc = await nats.connect(stack_env["NATS_URL"])
    try:
        await nc.jetstream().purge_stream(queue.STREAM)
    finally:
        await nc.close()

    requeued = await task_row_when(
        db,
        task_id,
        lambda row: (row.queued_at or TWO_MINUTES_AGO) > TWO_MINUTES_AGO,
        timeout=SWEEP_DEADLINE_SECONDS,
        what="queued again",
    )

    assert requeued.status == "pending"
    assert await last_message_id(stack_env) == queue.message_id(task_id, 0)


async def new_job(client: httpx.AsyncClient) -> int:
    """A job matching nothing (tasks uploaded before 2000): it ends `done` at once."""
    body = {"where": {"status": "done", "uploaded_before": "2000-01-01T00:00:00Z"}, "preset": "thumbnail"}
    response = await client.post("/tasks/reprocess", json=body)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


async def test_jobs_that_ended_longer_ago_than_the_retention_are_deleted_with_their_task_lists(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    """JOB_RETENTION_SECONDS is 7 days by default: the sweep deletes a job done or cancelled 8 days
    ago (and its task list), and keeps one done yesterday and one paused for 8 days."""
    old_done, old_cancelled, recent, paused = [await new_job(client) for _ in range(4)]
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    changes = {
        old_done: {"finished_at": eight_days_ago},
        old_cancelled: {"state": "cancelled", "finished_at": eight_days_ago},
        recent: {"finished_at": datetime.now(UTC) - timedelta(days=1)},
        paused: {"state": "paused", "finished_at": None, "created_at": eight_days_ago},
    }
    for job_id, values in changes.items():
        await db.execute(update(ReprocessJob).where(ReprocessJob.id == job_id).values(**values))
    # A task list entry: cascaded away with its job (no foreign key to the task itself).
    await db.execute(insert(ReprocessJobTask).values(job_id=old_done, task_id=2**31 - 1, state="done"))
    await db.commit()

    async def old_ones_gone() -> bool:
        answers = [(await client.get(f"/jobs/{job_id}")).status_code for job_id in (old_done, old_cancelled)]
        return answers == [404, 404]

    await eventually(old_ones_gone, timeout=SWEEP_DEADLINE_SECONDS, what="ended jobs deleted by the sweep")
    for job_id in (recent, paused):
        assert (await client.get(f"/jobs/{job_id}")).status_code == 200, job_id
    left = await db.scalar(select(func.count()).where(ReprocessJobTask.job_id == old_done))
    assert left == 0
