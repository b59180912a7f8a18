"""The API's lease sweep: rows stuck in `processing` go back to the queue or end `failed`, and
temporary files left by killed processes are removed."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import INTERRUPTED_REASON, ImageTask
from tests import images
from tests.waiting import eventually, task_row_when

SWEEP_DEADLINE_SECONDS = 30  # the API sweeps every 6 s with the 60 s lease of the test settings


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
            started_at=datetime.now(UTC) - timedelta(minutes=2),
            leased_until=datetime.now(UTC) - timedelta(seconds=1),
        )
    )
    await db.commit()
    return task_id


async def test_an_expired_lease_puts_the_task_back_in_the_queue(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await stuck_task(client, db, attempts=1)

    task = await task_row_when(
        db,
        task_id,
        lambda task: task.status == "pending" and task.queued_at is not None,
        timeout=SWEEP_DEADLINE_SECONDS,
        what="pending and queued again",
    )

    assert task.attempts == 1 and task.error is None


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
