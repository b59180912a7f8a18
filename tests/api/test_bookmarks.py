"""The original design's URLs keep working: `/result/<file name>` and `/processed/<file name>` lead
to the newest task of that name the caller may see, and an id no task can have is a plain 404."""

from __future__ import annotations

import subprocess
import uuid

import httpx
import pytest

from api.deps import TASK_NOT_FOUND
from tests import images
from tests.api.test_api_keys import ALICE, BOB, keyed, keyed_api
from tests.waiting import final_status

__all__ = ["keyed", "keyed_api"]  # fixtures borrowed from the API-key tests


async def _upload(client: httpx.AsyncClient, name: str, headers: dict[str, str] | None = None) -> int:
    response = await client.post(
        "/upload", files={"file": (name, images.jpeg(), "image/jpeg")}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


@pytest.mark.parametrize("task_id", ["0", "-1", "2147483648", "99999999999999999999", "9" * 40])
@pytest.mark.parametrize("route", ["/status/{}", "/tasks/{}", "/tasks/{}/original", "/tasks/{}/events"])
async def test_an_id_no_task_can_have_is_not_found(
    client: httpx.AsyncClient, route: str, task_id: str
) -> None:
    response = await client.get(route.format(task_id))

    assert response.status_code == 404
    assert response.json() == {"detail": TASK_NOT_FOUND}


@pytest.mark.parametrize("task_id", ["abc", "1.5", "1e3"])
async def test_an_id_that_is_not_a_number_is_a_bad_request(client: httpx.AsyncClient, task_id: str) -> None:
    assert (await client.get(f"/status/{task_id}")).status_code == 422


async def test_result_by_file_name_leads_to_the_newest_task_of_that_name(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    name = f"bookmark {uuid.uuid4().hex[:8]}.JPG"
    await _upload(client, name)
    newest = await _upload(client, name)

    page = await client.get(f"/result/{name}")
    assert page.status_code == 303
    assert page.headers["location"] == f"/result/{newest}"
    assert (await client.get(f"/result/{newest}")).status_code == 200

    done = await final_status(client, newest)
    image = await client.get(f"/processed/{name}")
    assert image.status_code == 303
    assert image.headers["location"] == done["processed_url"]
    followed = await client.get(f"/processed/{name}", follow_redirects=True)
    assert followed.status_code == 200 and followed.headers["content-type"] == "image/jpeg"


async def test_an_unknown_name_is_a_404_page_for_browsers_and_json_for_clients(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/result/never-uploaded.jpg", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html") and TASK_NOT_FOUND in page.text

    api = await client.get("/result/never-uploaded.jpg")
    assert api.status_code == 404 and api.json() == {"detail": TASK_NOT_FOUND}


async def test_a_name_of_digits_is_an_id_first_then_a_name(client: httpx.AsyncClient) -> None:
    # Far beyond any id this suite makes, as a file name without an extension.
    name = str(2_000_000_000 + uuid.uuid4().int % 100_000_000)
    task_id = await _upload(client, name)

    by_name = await client.get(f"/result/{name}")
    assert by_name.status_code == 303 and by_name.headers["location"] == f"/result/{task_id}"
    by_id = await client.get(f"/result/{task_id}")
    assert by_id.status_code == 200


async def test_with_api_keys_a_name_finds_only_the_callers_own_tasks(keyed: httpx.AsyncClient) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}.jpg"
    alices = await _upload(keyed, name, ALICE)
    bobs = await _upload(keyed, name, BOB)

    for headers, own in ((ALICE, alices), (BOB, bobs)):
        page = await keyed.get(f"/result/{name}", headers=headers)
        assert page.status_code == 303 and page.headers["location"] == f"/result/{own}"
    other = f"alone-{uuid.uuid4().hex[:8]}.jpg"
    await _upload(keyed, other, ALICE)
    assert (await keyed.get(f"/result/{other}", headers=BOB)).status_code == 404
    assert (await keyed.get(f"/processed/{other}", headers=BOB)).status_code == 404
