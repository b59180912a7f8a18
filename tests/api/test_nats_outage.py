"""With NATS stopped, uploads are still accepted and are queued by the outbox relay once it is back."""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from devstack.stack import LocalServers
from tests import images


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

    deadline = time.monotonic() + 30
    while True:
        db.expire_all()
        task = await db.get(ImageTask, task_id)
        assert task is not None
        if task.queued_at is not None:
            break
        assert time.monotonic() < deadline, "the outbox relay did not queue the task after NATS came back"
        await asyncio.sleep(0.1)
    assert (await client.get("/ready")).status_code == 200
