"""With NATS stopped, uploads and retries are still accepted and are queued by the outbox relay once it
is back."""

from __future__ import annotations

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from devstack.stack import LocalServers
from tests import images
from tests.waiting import task_row, task_row_when


async def test_an_upload_accepted_while_nats_is_down_is_queued_when_it_returns(
    client: httpx.AsyncClient, db: AsyncSession, servers: LocalServers
) -> None:
    servers.nats.stop()
    try:
        ready = await client.get("/ready")
        response = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})
        assert ready.status_code == 503
        assert ready.json()["nats"] == "unreachable"
        assert response.status_code == 200
        task_id = response.json()["task_id"]
        task = await db.get(ImageTask, task_id)
        assert task is not None and task.queued_at is None, "not queued yet: the row waits for the relay"
    finally:
        servers.nats.start()

    await task_row_when(
        db, task_id, lambda task: task.queued_at is not None, timeout=30, what="queued by the outbox relay"
    )
    assert (await client.get("/ready")).status_code == 200


async def test_a_retry_accepted_while_nats_is_down_is_queued_when_it_returns(
    client: httpx.AsyncClient, db: AsyncSession, servers: LocalServers
) -> None:
    uploaded = await client.post("/upload", files={"file": ("r.jpg", images.jpeg(), "image/jpeg")})
    task_id = uploaded.json()["task_id"]
    await db.execute(
        update(ImageTask).where(ImageTask.id == task_id).values(status="failed", error="x", attempts=3)
    )
    await db.commit()
    servers.nats.stop()
    try:
        response = await client.post(f"/tasks/{task_id}/retry")
        assert (response.status_code, response.json()["status"]) == (202, "pending")
        task = await task_row(db, task_id)
        assert (task.queued_at, task.retries) == (None, 1), "not queued yet: the row waits for the relay"
    finally:
        servers.nats.start()

    await task_row_when(
        db, task_id, lambda task: task.queued_at is not None, timeout=30, what="queued by the outbox relay"
    )
