"""GET /tasks/{task_id}/original: the upload as sent, with the type recorded for it, by task id only."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import API_KEY_REQUIRED, TASK_NOT_FOUND
from api.routes.originals import ORIGINAL_NOT_FOUND
from tests import images
from tests.api.test_api_keys import ALICE, BOB, keyed, keyed_api, upload
from tests.waiting import task_row

__all__ = ["keyed", "keyed_api"]  # fixtures borrowed from the API-key tests (re-exported, not unused)


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [("a.png", images.png(), "image/png"), ("b.jpg", images.jpeg(80, 60), "image/jpeg")],
)
async def test_the_original_comes_back_byte_for_byte_with_its_sniffed_type(
    client: httpx.AsyncClient, name: str, data: bytes, content_type: str
) -> None:
    # The declared type is wrong on purpose: the row's sniffed type is what is served.
    created = await client.post("/upload", files={"file": (name, data, "text/html")})
    task_id = created.json()["task_id"]

    response = await client.get(f"/tasks/{task_id}/original")

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "private" in response.headers["cache-control"]


async def test_an_unknown_task_has_no_original(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/999999/original")

    assert (response.status_code, response.json()) == (404, {"detail": TASK_NOT_FOUND})


async def test_a_task_whose_file_is_gone_answers_404_not_500(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path
) -> None:
    created = await client.post("/upload", files={"file": ("gone.png", images.png(), "image/png")})
    task_id = created.json()["task_id"]
    (uploads_dir / (await task_row(db, task_id)).input_name).unlink()  # as retention would

    response = await client.get(f"/tasks/{task_id}/original")

    assert (response.status_code, response.json()) == (404, {"detail": ORIGINAL_NOT_FOUND})


@pytest.mark.parametrize("path", ["/tasks/{id}/original", "/tasks/{id}/events"])
async def test_with_api_keys_another_keys_task_is_404_and_no_key_is_401(
    keyed: httpx.AsyncClient, path: str
) -> None:
    created = await upload(keyed, ALICE)
    url = path.format(id=created.json()["task_id"])

    as_bob = await keyed.get(url, headers=BOB)
    anonymous = await keyed.get(url)

    assert (as_bob.status_code, as_bob.json()) == (404, {"detail": TASK_NOT_FOUND})
    assert (anonymous.status_code, anonymous.json()) == (401, {"detail": API_KEY_REQUIRED})
    if path.endswith("original"):
        assert (await keyed.get(url, headers=ALICE)).status_code == 200
