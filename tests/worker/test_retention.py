"""RETENTION_DAYS: finished tasks older than that go, with their files; nothing else does."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from config import get_settings
from core.models import ImageTask
from tests import images
from tests.database import recorded_outputs
from tests.waiting import eventually, task_row
from worker.__main__ import run

LONG_AGO = datetime.now(UTC) - timedelta(days=10)


async def finished_task(
    client: httpx.AsyncClient, db: AsyncSession, processed_dir: Path, *, status: str, finished_at: datetime
) -> tuple[int, str]:
    """A task finished (or not) at `finished_at`, with an output file; returns its id and file name."""
    response = await client.post("/upload", files={"file": ("r.jpg", images.jpeg(40, 30), "image/jpeg")})
    task = await task_row(db, response.json()["task_id"])
    processed_dir.mkdir(parents=True, exist_ok=True)
    (processed_dir / task.input_name).write_bytes(images.jpeg(40, 30))
    await db.execute(
        update(ImageTask)
        .where(ImageTask.id == task.id)
        .values(
            status=status,
            finished_at=finished_at,
            output_name=task.input_name,
            outputs=recorded_outputs(task.input_name),
            upload_time=finished_at,
        )
    )
    await db.commit()
    return task.id, task.input_name


async def test_workers_delete_old_finished_tasks_and_their_files_only(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path, processed_dir: Path
) -> None:
    old_done = await finished_task(client, db, processed_dir, status="done", finished_at=LONG_AGO)
    old_failed = await finished_task(client, db, processed_dir, status="failed", finished_at=LONG_AGO)
    recent = await finished_task(client, db, processed_dir, status="done", finished_at=datetime.now(UTC))
    old_pending = await finished_task(client, db, processed_dir, status="pending", finished_at=LONG_AGO)
    gone_ids, gone_names = zip(old_done, old_failed, strict=True)
    kept_ids, kept_names = zip(recent, old_pending, strict=True)

    stop = asyncio.Event()
    worker = asyncio.create_task(run(replace(get_settings(), retention_days=7), stop))
    try:

        async def old_ones_gone() -> bool:
            db.expire_all()
            return all([await db.get(ImageTask, task_id) is None for task_id in gone_ids])

        await eventually(old_ones_gone, what="the old finished tasks deleted")
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    for name in gone_names:
        assert not (uploads_dir / name).exists()
        assert not (processed_dir / name).exists()
    for task_id in kept_ids:
        assert await db.get(ImageTask, task_id) is not None
    for name in kept_names:
        assert (uploads_dir / name).exists()
