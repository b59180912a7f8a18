"""Optional API keys: with API_KEYS set, tasks need a key, and a key sees only its own tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import API_KEY_REQUIRED, TASK_NOT_FOUND
from api.routes.events import MAX_STREAMS_PER_KEY, TOO_MANY_STREAMS_FOR_KEY
from api.routes.tasks import PROCESSED_NOT_FOUND
from core.models import ImageTask
from devstack.stack import running_api
from tests import images
from tests.sse import EventReader
from tests.waiting import eventually

ALICE = {"X-API-Key": "alice-key-0123456789"}
BOB = {"X-API-Key": "bob-key-0123456789abcdef"}


@pytest.fixture(scope="module")
def keyed_api(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    env = {**stack_env, "API_KEYS": f"{ALICE['X-API-Key']},{BOB['X-API-Key']}"}
    with running_api(env, log_file=workdir / "keyed-api.log") as base_url:
        yield base_url


@pytest.fixture
async def keyed(keyed_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keyed_api, timeout=30) as http:
        yield http


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], data: bytes | None = None
) -> httpx.Response:
    files = {"file": ("k.jpg", data or images.jpeg(), "image/jpeg")}
    return await client.post("/upload", files=files, headers=headers)


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "not-a-key-at-all-000"}, {"X-API-Key": ""}])
async def test_without_a_valid_key_tasks_are_401(keyed: httpx.AsyncClient, headers: dict[str, str]) -> None:
    uploaded = await upload(keyed, headers)
    status = await keyed.get("/status/1", headers=headers)

    for response in (uploaded, status):
        assert response.status_code == 401
        assert response.json() == {"detail": API_KEY_REQUIRED}
        assert response.headers["www-authenticate"] == "ApiKey"


async def test_an_upload_refused_before_its_body_arrived_says_the_connection_closes(keyed_api: str) -> None:
    """The 401 comes before the body is read, and the connection ends after it: the answer says
    `Connection: close`, so a client sends its next request on a new connection instead of on this
    one (where it used to be dropped unanswered when the server's FIN came late: httpx's "Server
    disconnected without sending a response" under load)."""
    url = httpx.URL(keyed_api)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 100000\r\n\r\n--b\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(30):
        answer = await reader.read(-1)  # to the end of the connection, which comes with the answer
    writer.close()

    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 401 "), answer
    assert b"\r\nconnection: close" in head, answer


async def test_health_and_the_form_stay_open(keyed: httpx.AsyncClient) -> None:
    assert (await keyed.get("/health")).status_code == 200
    assert (await keyed.get("/")).status_code == 200


async def test_a_key_sees_its_own_tasks_and_no_one_elses(
    keyed: httpx.AsyncClient, db: AsyncSession, processed_dir: Path
) -> None:
    task_id = (await upload(keyed, ALICE)).json()["task_id"]
    task = await db.get(ImageTask, task_id)
    assert task is not None and task.owner is not None
    assert ALICE["X-API-Key"] not in task.owner, "the key itself is never stored"
    # Finish the task by hand so its output can be asked for.
    output_name = task.input_name
    processed_dir.mkdir(parents=True, exist_ok=True)
    (processed_dir / output_name).write_bytes(images.jpeg())
    await db.execute(
        update(ImageTask).where(ImageTask.id == task_id).values(status="done", output_name=output_name)
    )
    await db.commit()

    for path in (f"/status/{task_id}", f"/result/{task_id}", f"/processed/{output_name}"):
        assert (await keyed.get(path, headers=ALICE)).status_code == 200, path
        other = await keyed.get(path, headers=BOB)
        assert other.status_code == 404, path
        assert other.json() in ({"detail": TASK_NOT_FOUND}, {"detail": PROCESSED_NOT_FOUND})


async def test_idempotency_keys_are_per_api_key(keyed: httpx.AsyncClient) -> None:
    alice = await upload(keyed, {**ALICE, "Idempotency-Key": "shared-name"}, images.jpeg(30, 30))
    bob = await upload(keyed, {**BOB, "Idempotency-Key": "shared-name"}, images.jpeg(31, 31))
    alice_again = await upload(keyed, {**ALICE, "Idempotency-Key": "shared-name"}, images.jpeg(30, 30))

    assert alice.status_code == bob.status_code == alice_again.status_code == 200
    assert alice.json()["task_id"] != bob.json()["task_id"]
    assert alice_again.json()["task_id"] == alice.json()["task_id"]


async def test_a_key_lists_only_its_own_tasks(keyed: httpx.AsyncClient) -> None:
    alices = {(await upload(keyed, ALICE)).json()["task_id"] for _ in range(2)}
    bobs = {(await upload(keyed, BOB)).json()["task_id"]}

    listed = {
        item["task_id"] for item in (await keyed.get("/tasks?limit=100", headers=ALICE)).json()["items"]
    }

    assert alices <= listed
    assert not bobs & listed
    assert (await keyed.get("/tasks")).status_code == 401


async def test_a_key_cannot_retry_or_cancel_another_keys_task(
    keyed: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = (await upload(keyed, ALICE)).json()["task_id"]
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(status="failed", error="x"))
    await db.commit()

    for control in ("retry", "cancel"):
        for headers in (BOB, {}):
            other = await keyed.post(f"/tasks/{task_id}/{control}", headers=headers)
            assert other.status_code == (404 if headers else 401), (control, headers)
    retried = await keyed.post(f"/tasks/{task_id}/retry", headers=ALICE)
    cancelled = await keyed.post(f"/tasks/{task_id}/cancel", headers=ALICE)

    assert (retried.status_code, cancelled.status_code) == (202, 200)
    assert (await keyed.post(f"/tasks/{task_id}/cancel", headers=BOB)).json() == {"detail": TASK_NOT_FOUND}


async def test_a_key_cannot_delete_another_keys_task(keyed: httpx.AsyncClient) -> None:
    task_id = (await upload(keyed, ALICE)).json()["task_id"]

    assert (await keyed.delete(f"/tasks/{task_id}", headers=BOB)).status_code == 404
    assert (await keyed.delete(f"/tasks/{task_id}", headers=ALICE)).status_code == 204


async def finished_by_hand(
    client: httpx.AsyncClient, headers: dict[str, str], db: AsyncSession, folder: Path
) -> tuple[int, str]:
    """Upload, then mark the task done with an output written by hand; its id and output name."""
    task_id = (await upload(client, headers)).json()["task_id"]
    task = await db.get(ImageTask, task_id)
    assert task is not None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / task.input_name).write_bytes(images.jpeg())
    await db.execute(
        update(ImageTask).where(ImageTask.id == task_id).values(status="done", output_name=task.input_name)
    )
    await db.commit()
    return task_id, task.input_name


async def test_with_keys_images_may_be_kept_by_no_shared_cache(
    keyed: httpx.AsyncClient, db: AsyncSession, processed_dir: Path
) -> None:
    # `public` let a CDN or proxy serve one key's image to anyone asking for the same URL.
    task_id, name = await finished_by_hand(keyed, ALICE, db, processed_dir)

    processed = await keyed.get(f"/processed/{name}", headers=ALICE)
    original = await keyed.get(f"/tasks/{task_id}/original", headers=ALICE)

    assert processed.status_code == original.status_code == 200
    assert processed.headers["cache-control"] == "private, max-age=86400"
    assert original.headers["cache-control"] == "private, max-age=3600"


async def test_without_keys_processed_images_stay_publicly_cacheable(
    client: httpx.AsyncClient, db: AsyncSession, processed_dir: Path
) -> None:
    _, name = await finished_by_hand(client, {}, db, processed_dir)

    processed = await client.get(f"/processed/{name}")

    assert processed.status_code == 200
    assert processed.headers["cache-control"] == "public, max-age=86400"


async def test_one_key_cannot_take_every_live_stream_slot(keyed: httpx.AsyncClient) -> None:
    # No worker runs here: the tasks stay pending, so their streams stay open.
    alice_url = f"/tasks/{(await upload(keyed, ALICE)).json()['task_id']}/events"
    bob_url = f"/tasks/{(await upload(keyed, BOB)).json()['task_id']}/events"
    async with contextlib.AsyncExitStack() as held:
        readers = []
        for _ in range(MAX_STREAMS_PER_KEY):
            stream = await held.enter_async_context(keyed.stream("GET", alice_url, headers=ALICE))
            assert stream.status_code == 200
            # Kept, and read once: the slot is taken once the first event is out.
            readers.append(EventReader(stream))
            assert await readers[-1].next() is not None

        refused = await keyed.get(alice_url, headers=ALICE)
        assert refused.status_code == 429
        assert refused.json() == {"detail": TOO_MANY_STREAMS_FOR_KEY}
        assert refused.json() == {
            "detail": "This API key already has 25 live status streams open, the most one key may hold; "
            "close one or poll GET /status instead."
        }
        assert refused.headers["retry-after"] == "10"

        async with keyed.stream("GET", bob_url, headers=BOB) as bobs:
            assert bobs.status_code == 200, "another key still gets a stream"
            assert await EventReader(bobs).next() is not None

    # All of Alice's streams closed: her slots come back.
    async def alice_served_again() -> bool:
        async with keyed.stream("GET", alice_url, headers=ALICE) as again:
            return again.status_code == 200

    await eventually(alice_served_again, timeout=10, what="Alice's slots given back")


async def test_a_refused_upload_waiting_for_100_continue_is_answered_without_inviting_its_body(
    keyed_api: str,
) -> None:
    """curl and .NET ask `Expect: 100-continue` before a large body: a request refused on its head
    gets the 401 at once, not a `100 Continue` that makes the client send the body for nothing."""
    url = httpx.URL(keyed_api)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000000\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
    finally:
        writer.close()

    assert status_line.startswith(b"HTTP/1.1 401"), status_line
