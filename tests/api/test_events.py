"""GET /tasks/{task_id}/events on the real API process: one event at once, one per change, in
order, and the end of the stream once the task is final or gone.

No worker runs here: the tests move the row through its statuses themselves, waiting for each
event before the next change, so every step is seen (a real worker can be quicker than a poll).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import TASK_NOT_FOUND
from api.routes.events import RETRY_MILLISECONDS, TASK_DELETED
from core.models import ImageTask
from tests import images
from tests.sse import Event, EventReader


async def new_task(client: httpx.AsyncClient, name: str = "live.jpg") -> int:
    response = await client.post("/upload", files={"file": (name, images.jpeg(64, 48), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def set_row(db: AsyncSession, task_id: int, **values: object) -> None:
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(**values))
    await db.commit()


@asynccontextmanager
async def events_of(
    client: httpx.AsyncClient, task_id: int, headers: dict[str, str] | None = None
) -> AsyncIterator[EventReader]:
    async with client.stream("GET", f"/tasks/{task_id}/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        yield EventReader(response)


async def next_status(reader: EventReader) -> Event:
    event = await reader.next()
    assert event is not None, "the stream ended early"
    assert event.event == "status"
    return event


async def test_statuses_arrive_in_order_with_counting_ids_and_the_stream_ends_after_done(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await new_task(client)

    async with events_of(client, task_id) as reader:
        first = await next_status(reader)
        await set_row(db, task_id, status="processing", started_at=func.now(), attempts=1)
        second = await next_status(reader)
        await set_row(db, task_id, status="done", finished_at=func.now())
        third = await next_status(reader)
        after = await reader.next()

    assert [e.json()["status"] for e in (first, second, third)] == ["pending", "processing", "done"]
    assert [e.id for e in (first, second, third)] == ["1", "2", "3"]
    assert first.retry == str(RETRY_MILLISECONDS), "the browser is told when to reconnect"
    assert after is None, "the stream ends once the task is final"
    assert third.json() == (await client.get(f"/status/{task_id}")).json(), "the body is /status's"


async def test_the_stream_ends_after_failed_and_carries_the_reason(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await new_task(client)
    reason = "The image is damaged and cannot be decoded."

    async with events_of(client, task_id) as reader:
        await next_status(reader)
        await set_row(db, task_id, status="failed", error=reason, finished_at=func.now())
        failed = await next_status(reader)
        after = await reader.next()

    assert (failed.json()["status"], failed.json()["error"]) == ("failed", reason)
    assert after is None


async def test_a_final_task_gets_one_event_and_the_end(client: httpx.AsyncClient, db: AsyncSession) -> None:
    task_id = await new_task(client)
    await set_row(db, task_id, status="done", finished_at=func.now())

    async with events_of(client, task_id) as reader:
        only = await next_status(reader)
        after = await reader.next()

    assert only.json()["status"] == "done"
    assert after is None


async def test_a_task_deleted_mid_stream_ends_it_with_a_deleted_event(
    client: httpx.AsyncClient,
) -> None:
    task_id = await new_task(client)

    async with events_of(client, task_id) as reader:
        await next_status(reader)
        assert (await client.delete(f"/tasks/{task_id}")).status_code == 204
        gone = await reader.next()
        after = await reader.next()

    assert gone is not None and gone.event == "deleted"
    assert gone.json() == {"task_id": task_id, "detail": TASK_DELETED}
    assert after is None


async def test_a_reconnecting_browser_gets_the_status_at_once_and_ids_carry_on(
    client: httpx.AsyncClient,
) -> None:
    task_id = await new_task(client)

    async with events_of(client, task_id, headers={"Last-Event-ID": "41"}) as reader:
        first = await next_status(reader)

    assert first.id == "42"
    assert first.json()["task_id"] == task_id


@pytest.mark.parametrize("task_id", ["999999", "2147483647", "0", "2147483648"])
async def test_an_unknown_task_is_404_like_status(client: httpx.AsyncClient, task_id: str) -> None:
    response = await client.get(f"/tasks/{task_id}/events")

    assert response.status_code == 404
    assert response.json() == {"detail": TASK_NOT_FOUND}


@pytest.mark.parametrize("task_id", ["abc", "1.5"])
async def test_a_task_id_that_is_not_a_number_is_422(client: httpx.AsyncClient, task_id: str) -> None:
    assert (await client.get(f"/tasks/{task_id}/events")).status_code == 422


PLACEHOLDER = {
    "thumbhash": "FvoBA7iPdYmIiHiHj4j3iIg=",
    "dominant_color": "#c81e28",
    "width": 400,
    "height": 200,
}


async def test_a_recorded_placeholder_gets_its_own_event_before_the_status_that_shows_it(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await new_task(client)

    async with events_of(client, task_id) as reader:
        await next_status(reader)
        await set_row(db, task_id, status="processing", started_at=func.now(), attempts=1)
        await next_status(reader)
        await set_row(db, task_id, placeholder=PLACEHOLDER)
        placeholder = await reader.next()
        showing = await next_status(reader)
        await set_row(db, task_id, status="done", finished_at=func.now())
        done = await next_status(reader)
        after = await reader.next()

    assert placeholder is not None and placeholder.event == "placeholder"
    assert placeholder.json() == PLACEHOLDER == showing.json()["placeholder"] == done.json()["placeholder"]
    assert [placeholder.id, showing.id, done.id] == ["3", "4", "5"]
    assert after is None, "one placeholder event only"


async def test_a_final_task_with_a_placeholder_sends_it_first(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await new_task(client)
    await set_row(db, task_id, status="done", finished_at=func.now(), placeholder=PLACEHOLDER)

    async with events_of(client, task_id) as reader:
        placeholder = await reader.next()
        only = await next_status(reader)
        after = await reader.next()

    assert placeholder is not None and (placeholder.event, placeholder.id) == ("placeholder", "1")
    assert placeholder.retry == str(RETRY_MILLISECONDS), "the first event tells when to reconnect"
    assert (only.json()["status"], only.id) == ("done", "2")
    assert after is None
