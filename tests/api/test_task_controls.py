"""Retry and cancel through the real API and PostgreSQL (no worker here: tasks stay where the test
puts them): the status rules, 409 reasons, races decided by the database, and the CSRF guard."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import TASK_NOT_FOUND
from api.routes.controls import BAD_RETRY_OUTPUTS
from api.same_origin import CROSS_SITE
from core import queue, tasks
from core.db import make_driver_pool
from core.models import ImageTask, Priority
from core.storage import new_stored_name
from core.task_controls import NOT_CANCELLABLE, NOT_RETRYABLE
from tests import images
from tests.api.test_callbacks import Receiver, callback_state, upload_with_callback, verify
from tests.database import recorded_outputs, session_on
from tests.sse import EventReader
from tests.waiting import eventually, task_row

FAILED_REASON = "Processing failed 3 times; giving up. Last error: OSError"


async def upload(client: httpx.AsyncClient) -> int:
    response = await client.post("/upload", files={"file": ("c.jpg", images.jpeg(40, 30), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def set_row(db: AsyncSession, task_id: int, **values: object) -> None:
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(**values))
    await db.commit()


async def failed_task(client: httpx.AsyncClient, db: AsyncSession) -> int:
    task_id = await upload(client)
    await set_row(db, task_id, status="failed", error=FAILED_REASON, attempts=3)
    return task_id


async def test_retry_puts_a_failed_task_back_to_pending_with_its_attempts_reset_and_queues_it(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await failed_task(client, db)

    response = await client.post(f"/tasks/{task_id}/retry")

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["attempts"], body["error"]) == ("pending", 0, None)
    assert body["finished_at"] is None
    row = await task_row(db, task_id)
    assert (row.retries, row.queued_at is not None) == (1, True), "published at once and marked queued"


@pytest.mark.parametrize("status", ["pending", "processing", "done", "cancelled"])
async def test_retry_of_a_task_that_did_not_fail_is_409_saying_why(
    client: httpx.AsyncClient, db: AsyncSession, status: str
) -> None:
    task_id = await upload(client)
    await set_row(db, task_id, status=status)

    response = await client.post(f"/tasks/{task_id}/retry")

    assert (response.status_code, response.json()) == (409, {"detail": NOT_RETRYABLE.format(status=status)})
    assert (await task_row(db, task_id)).status == status


async def test_two_retries_at_once_run_the_task_once(client: httpx.AsyncClient, db: AsyncSession) -> None:
    for _ in range(5):
        task_id = await failed_task(client, db)

        answers = await asyncio.gather(*(client.post(f"/tasks/{task_id}/retry") for _ in range(2)))

        assert sorted(answer.status_code for answer in answers) == [202, 409]
        assert (await task_row(db, task_id)).retries == 1


async def test_cancel_of_a_pending_task_is_final_and_repeating_it_is_no_error(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await upload(client)

    first = await client.post(f"/tasks/{task_id}/cancel")
    again = await client.post(f"/tasks/{task_id}/cancel")

    assert (first.status_code, first.json()["status"]) == (200, "cancelled")
    assert first.json()["finished_at"] is not None
    assert (again.status_code, again.json()) == (200, first.json())
    listed = (await client.get("/tasks", params={"status": "cancelled", "limit": 100})).json()
    assert task_id in {item["task_id"] for item in listed["items"]}


async def test_cancel_of_a_processing_task_ends_its_lease(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await upload(client)
    await set_row(db, task_id, status="processing", attempts=1)

    response = await client.post(f"/tasks/{task_id}/cancel")

    assert response.json()["status"] == "cancelled"
    assert (await task_row(db, task_id)).leased_until is None


@pytest.mark.parametrize("status", ["done", "failed"])
async def test_cancel_of_a_finished_task_is_409_saying_why(
    client: httpx.AsyncClient, db: AsyncSession, status: str
) -> None:
    task_id = await upload(client)
    await set_row(db, task_id, status=status)

    response = await client.post(f"/tasks/{task_id}/cancel")

    assert (response.status_code, response.json()) == (409, {"detail": NOT_CANCELLABLE.format(status=status)})


@pytest.mark.parametrize("control", ["retry", "cancel"])
async def test_controls_of_a_missing_task_are_404(client: httpx.AsyncClient, control: str) -> None:
    for task_id in ("2147483000", "0", "99999999999"):
        response = await client.post(f"/tasks/{task_id}/{control}")
        assert (response.status_code, response.json()) == (404, {"detail": TASK_NOT_FOUND})
    assert (await client.post(f"/tasks/abc/{control}")).status_code == 422


async def test_retry_takes_only_the_outputs_it_knows(client: httpx.AsyncClient, db: AsyncSession) -> None:
    task_id = await failed_task(client, db)

    for bogus in ("some", "bogus", "ALL", ""):
        response = await client.post(f"/tasks/{task_id}/retry", params={"outputs": bogus})

        # One sentence naming the field, as every bad field of the API is answered (not a list).
        assert (response.status_code, response.json()) == (422, {"detail": BAD_RETRY_OUTPUTS})
    assert BAD_RETRY_OUTPUTS == "`outputs` must be one of: all, failed."
    assert (await task_row(db, task_id)).status == "failed"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://sub.example"},
    ],
)
async def test_a_control_another_site_made_a_browser_send_is_refused(
    client: httpx.AsyncClient, db: AsyncSession, headers: dict[str, str]
) -> None:
    task_id = await upload(client)

    response = await client.post(f"/tasks/{task_id}/cancel", headers=headers)

    assert (response.status_code, response.json()) == (403, {"detail": CROSS_SITE})
    assert (await task_row(db, task_id)).status == "pending"


async def test_an_old_browser_posting_from_our_own_origin_is_let_through(
    client: httpx.AsyncClient,
) -> None:
    task_id = await upload(client)

    response = await client.post(f"/tasks/{task_id}/cancel", headers={"Origin": str(client.base_url)})

    assert response.status_code == 200


async def test_a_form_post_from_our_own_page_is_sent_back_to_the_task_page(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await upload(client)
    # As Chromium sends our own form's post: our pages' Referrer-Policy makes its Origin "null".
    own = {
        "Origin": "null",
        "Sec-Fetch-Site": "same-origin",
        "Accept": "text/html",
    }

    cancelled = await client.post(f"/tasks/{task_id}/cancel", headers=own)
    refused = await client.post(f"/tasks/{task_id}/retry", headers=own)

    assert (cancelled.status_code, cancelled.headers["location"]) == (303, f"/result/{task_id}")
    assert refused.status_code == 409
    assert NOT_RETRYABLE.format(status="cancelled") in refused.text
    assert f'href="/result/{task_id}"' in refused.text


async def test_a_cancel_racing_the_workers_finish_has_one_winner(
    client: httpx.AsyncClient, db: AsyncSession, stack_env: dict[str, str]
) -> None:
    """The worker's finish and the owner's cancel both require `pending`/`processing`: PostgreSQL
    lets exactly one through, and the other learns it from the row."""
    pool = await make_driver_pool(stack_env["DATABASE_URL"], max_size=4)
    outcomes: set[str] = set()
    try:
        for _ in range(10):
            task_id = await upload(client)
            claim = await tasks.claim(pool, task_id, timedelta(minutes=1))
            assert claim is not None
            outputs = recorded_outputs(f"{task_id}-race.jpg")

            finished, cancelled = await asyncio.gather(
                tasks.finish_done(pool, task_id, outputs, claim.started_at),
                client.post(f"/tasks/{task_id}/cancel"),
            )

            row = await task_row(db, task_id)
            if finished:
                assert (cancelled.status_code, row.status) == (409, "done")
                assert cancelled.json() == {"detail": NOT_CANCELLABLE.format(status="done")}
            else:
                assert (cancelled.status_code, row.status, row.outputs) == (200, "cancelled", None)
            outcomes.add(row.status)
    finally:
        await pool.close()
    assert outcomes <= {"done", "cancelled"}


# (status before, (cancel's answer, reprocess's answer)) -> the row's (status, generation) after.
FINAL_AFTER_RACE = {
    ("pending", (200, 202)): ("pending", 1),  # cancelled, then reprocessed
    ("pending", (200, 409)): ("cancelled", 0),  # the reprocess found it still pending
    ("done", (409, 202)): ("pending", 1),  # the cancel found it done, then the reprocess
    ("done", (200, 202)): ("cancelled", 1),  # reprocessed, then the new run cancelled
}


@pytest.mark.parametrize("start", ["pending", "done"])
async def test_a_cancel_racing_a_reprocess_answers_what_it_decided(
    client: httpx.AsyncClient, db: AsyncSession, start: str
) -> None:
    """A reprocess may follow a cancel at once (a cancelled task is final). Whichever order
    PostgreSQL puts them in, the cancel's answer is the row as the cancel left it: a 200 says
    `cancelled` (never the `pending` the reprocess made after it), and a 409 names the status the
    row had when the cancel was refused."""
    orders: set[tuple[int, int]] = set()
    for _ in range(12):
        task_id = await upload(client)
        await set_row(db, task_id, status=start)

        cancelled, reprocessed = await asyncio.gather(
            client.post(f"/tasks/{task_id}/cancel"),
            client.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"}),
        )

        row = await task_row(db, task_id)
        order = (cancelled.status_code, reprocessed.status_code)
        orders.add(order)
        if cancelled.status_code == 200:
            assert cancelled.json()["status"] == "cancelled", cancelled.json()
            assert cancelled.json()["finished_at"] is not None
        else:
            assert cancelled.json() == {"detail": NOT_CANCELLABLE.format(status=start)}
        # The row ends as the order the answers tell implies.
        assert (row.status, row.processing.get("generation", 0)) == FINAL_AFTER_RACE[start, order], order
    # Which of the possible orders this run saw is chance.
    assert orders <= {order for begun, order in FINAL_AFTER_RACE if begun == start}, orders


async def test_a_retried_task_is_left_for_the_dispatcher_with_a_message_id_of_its_own(
    client: httpx.AsyncClient, db: AsyncSession, stack_env: dict[str, str]
) -> None:
    """Were NATS away at the retry, the dispatcher publishes the row; its message id differs from the
    upload's (same attempt count, 0), so JetStream's duplicate window cannot swallow it."""
    task_id = await failed_task(client, db)
    assert (await client.post(f"/tasks/{task_id}/retry")).status_code == 202

    # As if its publish had failed; uncommitted, so the API's own dispatcher cannot take it meanwhile.
    async with session_on(stack_env["DATABASE_URL"]) as session, session.begin():
        await session.execute(
            update(ImageTask)
            .where(ImageTask.id == task_id)
            .values(queued_at=None, upload_time=ImageTask.upload_time - timedelta(minutes=1))
        )
        waiting = await tasks.next_waiting(session, 10_000)
        await session.rollback()
    found = [row for rows in waiting.values() for row in rows if row.id == task_id]

    assert found == [tasks.Unqueued(task_id, 0, 0, 1, None, Priority.NORMAL)]
    assert queue.message_id(task_id, 0, retries=1) != queue.message_id(task_id, 0)
    assert queue.message_id(task_id, 2) == f"task-{task_id}-2", "ids of tasks never retried are unchanged"


async def test_the_event_stream_ends_once_the_task_is_cancelled(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await upload(client)

    async with client.stream("GET", f"/tasks/{task_id}/events") as response:
        reader = EventReader(response)
        first = await reader.next()
        assert first is not None and first.json()["status"] == "pending"
        assert (await client.post(f"/tasks/{task_id}/cancel")).status_code == 200
        statuses = []
        while (event := await reader.next()) is not None:
            statuses.append(event.json()["status"])

    assert statuses[-1] == "cancelled", "the stream ends after the final status, as for done or failed"


async def test_a_cancelled_task_is_posted_to_its_callback(client: httpx.AsyncClient) -> None:
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver.handler())
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        task_id = await upload_with_callback(client, receiver.url)
        assert (await client.post(f"/tasks/{task_id}/cancel")).status_code == 200
        status = await callback_state(client, task_id, "delivered")
    finally:
        server.shutdown()
        server.server_close()

    (delivery,) = receiver.received
    assert verify(delivery)["status"] == status["status"] == "cancelled"
    assert delivery.headers["X-Imagequeue-Event"] == "task.cancelled"


async def test_a_retry_of_the_failed_outputs_of_a_task_that_made_none_retries_it_whole(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await failed_task(client, db)

    response = await client.post(f"/tasks/{task_id}/retry", params={"outputs": "failed"})

    assert (response.status_code, response.json()["status"]) == (202, "pending")
    assert (await task_row(db, task_id)).partial_outputs is None


async def test_the_result_page_offers_a_retry_of_the_failed_outputs_when_some_were_made(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    whole = await failed_task(client, db)
    partly = await failed_task(client, db)
    made = recorded_outputs(f"{partly}-made.jpg")
    partial = {"generation": 0, "made": made, "failed": [{"name": "other", "error": "x"}]}
    await set_row(db, partly, partial_outputs=partial)

    whole_page = (await client.get(f"/result/{whole}", headers={"Accept": "text/html"})).text
    partly_page = (await client.get(f"/result/{partly}", headers={"Accept": "text/html"})).text

    assert "Retry only the failed outputs" not in whole_page
    assert f'action="/tasks/{partly}/retry?outputs=failed"' in partly_page


async def test_deleting_a_partly_failed_task_removes_the_outputs_it_made(
    client: httpx.AsyncClient, db: AsyncSession, processed_dir: Path
) -> None:
    task_id = await failed_task(client, db)
    name = new_stored_name(".jpg")
    processed_dir.mkdir(parents=True, exist_ok=True)
    (processed_dir / name).write_bytes(images.jpeg())
    partial = {"generation": 0, "made": recorded_outputs(name), "failed": [{"name": "b", "error": "x"}]}
    await set_row(db, task_id, partial_outputs=partial)

    assert (await client.delete(f"/tasks/{task_id}")).status_code == 204

    assert not (processed_dir / name).exists()


async def test_reprocessing_a_partly_failed_task_removes_what_the_failed_run_made(
    client: httpx.AsyncClient, db: AsyncSession, processed_dir: Path
) -> None:
    task_id = await failed_task(client, db)
    name = new_stored_name(".jpg")
    processed_dir.mkdir(parents=True, exist_ok=True)
    (processed_dir / name).write_bytes(images.jpeg())
    partial = {"generation": 0, "made": recorded_outputs(name), "failed": [{"name": "b", "error": "x"}]}
    await set_row(db, task_id, partial_outputs=partial)

    reprocessed = await client.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"})

    assert reprocessed.status_code == 202, reprocessed.text
    row = await task_row(db, task_id)
    assert row.partial_outputs is None
    assert [output["file"] for output in row.superseded_outputs or ()] == [name]
    # Final again (here: failed, as if the new run failed whole): the reprocess loop removes it.
    await set_row(db, task_id, status="failed", queued_at=None)

    async def removed() -> bool:
        return not (processed_dir / name).exists()

    await eventually(removed, timeout=30, what=f"the reprocess loop to remove {name}")
