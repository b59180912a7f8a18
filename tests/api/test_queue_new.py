"""With no dispatch window (DISPATCH_WINDOW=0, the default and the suite's), a new task is
published by the request that made it and marked queued by group commit (api/dispatcher.py
`queue_new`, api/queued_marks.py), instead of by a dispatcher pass per upload: by the time the
answer is sent the task is in the stream and its row says so, as with a pass."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from tests import images

AT_ONCE = 24


async def test_uploads_at_once_are_each_marked_queued_by_the_time_they_are_answered(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    data = images.jpeg()
    answers = await asyncio.gather(
        *(client.post("/upload", files={"file": (f"q{i}.jpg", data, "image/jpeg")}) for i in range(AT_ONCE))
    )
    assert [answer.status_code for answer in answers] == [200] * AT_ONCE
    ids = [answer.json()["task_id"] for answer in answers]
    rows = (await db.execute(select(ImageTask.id, ImageTask.queued_at).where(ImageTask.id.in_(ids)))).all()
    assert len(rows) == AT_ONCE
    assert [row.id for row in rows if row.queued_at is None] == []
