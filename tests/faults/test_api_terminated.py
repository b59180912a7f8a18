"""An API process stopped gracefully (SIGTERM) in the middle of a burst: it refuses new connections,
finishes the requests it had started, even one whose body is still arriving, and exits cleanly;
nothing is answered 500 and every upload it accepted is processed once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from devstack.servers import free_port
from tests import images
from tests.faults.burst import Burst, new_prefix
from tests.faults.outcome import TEMP_PREFIX, assert_processed_once, wait_until_done, wait_until_settled
from tests.faults.processes import Started, api_ready, assert_api_shut_down_cleanly, worker_ready
from tests.waiting import eventually

BOUNDARY = "fault-injection-boundary"


async def held_body(name: str, data: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    """A multipart body sent in two halves, the second only once `release` is set."""
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    yield body[: len(body) // 2]
    await release.wait()
    yield body[len(body) // 2 :]


def partial_uploads(uploads_dir: Path) -> set[Path]:
    return set(uploads_dir.glob(f"{TEMP_PREFIX}*"))


async def test_an_api_stopped_mid_burst_finishes_the_requests_it_started_and_loses_nothing(
    client: httpx.AsyncClient,
    apis: Callable[[str, int], Started],
    workers: Callable[[str], Started],
    db: AsyncSession,
    processed_dir: Path,
    uploads_dir: Path,
) -> None:
    prefix = new_prefix("api-term")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    api = apis("fault-api-terminated", port)
    worker = workers("fault-api-term-worker")
    await api_ready(api, base_url)
    await worker_ready(worker)

    release = asyncio.Event()
    partials_before = partial_uploads(uploads_dir)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as slow_client:
        slow = asyncio.create_task(
            slow_client.post(
                "/upload",
                content=held_body(f"{prefix}-slow.jpg", images.jpeg(640, 480), release),
                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            )
        )

        # The API streams an upload into a temporary file: once it exists, the request is in flight.
        async def in_flight() -> bool:
            if partial_uploads(uploads_dir) - partials_before:
                return True
            assert not slow.done(), "the held upload never started"
            return False

        await eventually(in_flight, timeout=10, what="the held upload's temporary file")

        async with Burst(base_url, prefix) as burst:
            await burst.wait_for_more(10)
            api.process.send_signal(signal.SIGTERM)
            # New connections are refused from now on, while the held upload is still unfinished.
            await burst.wait_for_errors(3)
            assert not slow.done()
            release.set()
            held = await slow
        exit_code = await asyncio.to_thread(api.process.wait, 30)

    assert held.status_code == 200, held.text
    assert_api_shut_down_cleanly(api, exit_code)
    assert burst.unexpected(allowed_statuses={200, 503}, connection_errors=True) == []
    accepted = burst.accepted | {held.json()["task_id"]}
    await wait_until_done(client, accepted, timeout=30)
    rows = await wait_until_settled(db, prefix, timeout=5)
    assert {row.id for row in rows} == accepted, "a request was cut off after committing its row"
    assert_processed_once(rows, processed_dir)
    assert await worker.stop() == 0, worker.log_tail()
