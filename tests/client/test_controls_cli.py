"""`python -m client retry` and `cancel` as a user runs them: a subprocess against the real API."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from core.task_controls import NOT_CANCELLABLE, NOT_RETRYABLE
from tests import images
from tests.client.test_client import run_client


async def upload(client: httpx.AsyncClient) -> int:
    response = await client.post("/upload", files={"file": ("cli.jpg", images.jpeg(40, 30), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def test_retry_runs_a_failed_task_again_and_says_why_it_cannot_twice(
    client: httpx.AsyncClient, db: AsyncSession, api_process: str
) -> None:
    task_id = await upload(client)
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(status="failed", error="x"))
    await db.commit()

    first = run_client("retry", str(task_id), "--json", url=api_process)
    again = run_client("retry", str(task_id), url=api_process)

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "pending"
    assert again.returncode == 1
    assert NOT_RETRYABLE.format(status="pending") in again.stderr


async def test_cancel_is_final_and_a_second_cancel_is_no_error(
    client: httpx.AsyncClient, api_process: str
) -> None:
    task_id = await upload(client)

    first = run_client("cancel", str(task_id), url=api_process)
    again = run_client("cancel", str(task_id), "--json", url=api_process)
    listed = run_client("list", "--status", "cancelled", "--json", "--limit", "100", url=api_process)

    assert first.returncode == 0, first.stderr
    assert "cancelled" in first.stdout
    assert (again.returncode, json.loads(again.stdout)["status"]) == (0, "cancelled")
    assert task_id in {item["task_id"] for item in json.loads(listed.stdout)}


async def test_cancel_of_a_done_task_exits_1_with_the_reason(
    client: httpx.AsyncClient, db: AsyncSession, api_process: str
) -> None:
    task_id = await upload(client)
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(status="done"))
    await db.commit()

    ran = run_client("cancel", str(task_id), url=api_process)

    assert ran.returncode == 1
    assert NOT_CANCELLABLE.format(status="done") in ran.stderr


def test_a_bad_id_is_a_usage_error_before_anything_is_sent(api_process: str) -> None:
    for command in ("retry", "cancel"):
        ran = run_client(command, "abc", url=api_process)
        assert ran.returncode == 2
