"""Waiting for something with a deadline: poll it, and fail naming what never happened.

Tests synchronise with the processes they start only through these (never through a bare sleep).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask

POLL_SECONDS = 0.05
FINAL = ("done", "failed", "cancelled")


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 30,
    what: str | Callable[[], str],
    every: float = POLL_SECONDS,
) -> None:
    """Await `check` every `every` s until it returns true, or fail naming `what` after `timeout` s.

    `what` may be a function, called at the deadline, to report the state the wait ended in.
    An AssertionError raised by `check` itself ends the wait at once: a state that cannot come right.
    """
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        await asyncio.sleep(every)


async def final_status(client: httpx.AsyncClient, task_id: int, *, timeout: float = 60) -> dict[str, Any]:
    """Poll GET /status/{task_id} until the task is done or failed; return that answer's JSON."""
    status: dict[str, Any] = {}

    async def final() -> bool:
        nonlocal status
        response = await client.get(f"/status/{task_id}")
        assert response.status_code == 200, response.text
        status = response.json()
        return status["status"] in FINAL

    await eventually(final, timeout=timeout, what=f"task {task_id} done or failed")
    return status


async def task_row(db: AsyncSession, task_id: int) -> ImageTask:
    """The task's row as the database has it now (nothing kept from earlier reads in the session)."""
    db.expire_all()
    task = await db.get(ImageTask, task_id)
    assert task is not None
    return task


async def task_row_when(
    db: AsyncSession,
    task_id: int,
    condition: Callable[[ImageTask], bool],
    *,
    timeout: float = 30,
    what: str,
) -> ImageTask:
    """Read the task's row until `condition` holds for it; return that row."""
    row: ImageTask | None = None

    async def holds() -> bool:
        nonlocal row
        row = await task_row(db, task_id)
        return condition(row)

    await eventually(holds, timeout=timeout, what=f"task {task_id} {what}")
    assert row is not None
    return row


async def final_row(db: AsyncSession, task_id: int, *, timeout: float = 30) -> ImageTask:
    """The task's row once it is done or failed."""
    return await task_row_when(
        db, task_id, lambda task: task.status in FINAL, timeout=timeout, what="done or failed"
    )
