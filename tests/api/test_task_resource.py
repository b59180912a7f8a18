"""The task resource: GET /tasks (newest first, filtered, keyset pages), GET and DELETE /tasks/{task_id}."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import TASK_NOT_FOUND
from api.routes.tasks import BAD_STATUS_FILTER
from core.models import ImageTask, TaskStatus
from tests import images
from tests.database import recorded_outputs
from tests.waiting import task_row


async def upload(client: httpx.AsyncClient) -> int:
    response = await client.post("/upload", files={"file": ("t.jpg", images.jpeg(40, 30), "image/jpeg")})
    assert response.status_code == 200
    return response.json()["task_id"]


async def test_pages_walk_every_task_once_newest_first(client: httpx.AsyncClient, db: AsyncSession) -> None:
    mine = [await upload(client) for _ in range(3)]

    first = (await client.get("/tasks", params={"limit": 2})).json()
    seen: list[int] = [item["task_id"] for item in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = (await client.get("/tasks", params={"limit": 2, "cursor": cursor})).json()
        assert len(page["items"]) <= 2
        seen += [item["task_id"] for item in page["items"]]
        cursor = page["next_cursor"]

    assert seen[:3] == mine[::-1], "the newest tasks come first"
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
    assert len(seen) == await db.scalar(select(func.count()).select_from(ImageTask))


async def test_a_status_filter_returns_only_that_status(client: httpx.AsyncClient, db: AsyncSession) -> None:
    failed_id = await upload(client)
    await db.execute(update(ImageTask).where(ImageTask.id == failed_id).values(status="failed", error="x"))
    await db.commit()

    body = (await client.get("/tasks", params={"status": "failed", "limit": 100})).json()

    assert failed_id in {item["task_id"] for item in body["items"]}
    assert {item["status"] for item in body["items"]} == {"failed"}


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"cursor": 0}, {"cursor": "abc"}])
async def test_bad_list_parameters_are_422(client: httpx.AsyncClient, params: dict) -> None:
    assert (await client.get("/tasks", params=params)).status_code == 422


async def test_an_unknown_status_is_a_422_sentence_naming_those_taken_as_documented(
    client: httpx.AsyncClient,
) -> None:
    """Our own check answers one sentence, as every route's do (not FastAPI's list), and the
    document's enum for the parameter is exactly what the route takes."""
    refused = await client.get("/tasks", params={"status": "lost"})
    document = (await client.get("/openapi.json")).json()["paths"]["/tasks"]["get"]
    [parameter] = [p for p in document["parameters"] if p["name"] == "status"]

    assert (refused.status_code, refused.json()) == (422, {"detail": BAD_STATUS_FILTER})
    assert BAD_STATUS_FILTER == "`status` must be one of: pending, processing, done, failed, cancelled."
    assert parameter["schema"]["enum"] == [status.value for status in TaskStatus]
    assert "ErrorResponse" in str(document["responses"]["422"])
    for status in parameter["schema"]["enum"]:
        assert (await client.get("/tasks", params={"status": status, "limit": 1})).status_code == 200


async def test_a_task_reads_the_same_under_tasks_and_status(client: httpx.AsyncClient) -> None:
    task_id = await upload(client)

    under_tasks = await client.get(f"/tasks/{task_id}")
    under_status = await client.get(f"/status/{task_id}")
    missing = await client.get("/tasks/2147483000")

    assert under_tasks.status_code == 200
    assert under_tasks.json() == under_status.json()
    assert (missing.status_code, missing.json()) == (404, {"detail": TASK_NOT_FOUND})


async def test_deleting_a_task_removes_its_row_and_files(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path, processed_dir: Path
) -> None:
    task_id = await upload(client)
    task = await task_row(db, task_id)
    # Finish it by hand, so it has an output to remove too.
    processed_dir.mkdir(parents=True, exist_ok=True)
    (processed_dir / task.input_name).write_bytes(images.jpeg())
    await db.execute(
        update(ImageTask)
        .where(ImageTask.id == task_id)
        .values(status="done", output_name=task.input_name, outputs=recorded_outputs(task.input_name))
    )
    await db.commit()

    deleted = await client.delete(f"/tasks/{task_id}")

    assert deleted.status_code == 204
    assert (await client.get(f"/tasks/{task_id}")).status_code == 404
    assert (await client.get(f"/processed/{task.input_name}")).status_code == 404
    assert not (uploads_dir / task.input_name).exists()
    assert not (processed_dir / task.input_name).exists()
    db.expire_all()
    assert await db.get(ImageTask, task_id) is None


async def test_deleting_an_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/tasks/2147483000")

    assert (response.status_code, response.json()) == (404, {"detail": TASK_NOT_FOUND})


@pytest.mark.parametrize("input_name", ["a" * 32, "fair-order-row", "../../etc/passwd"])
async def test_deleting_a_task_whose_file_name_was_never_one_we_made_is_204(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path, input_name: str
) -> None:
    # A row written past the API (a script, a restore, an old import) may name its file anything;
    # the name was never ours to resolve, so only the row goes and nothing outside the folders is touched.
    task_id = await upload(client)
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(input_name=input_name))
    await db.commit()

    deleted = await client.delete(f"/tasks/{task_id}")

    assert deleted.status_code == 204
    assert (await client.get(f"/tasks/{task_id}")).status_code == 404
    db.expire_all()
    assert await db.get(ImageTask, task_id) is None
