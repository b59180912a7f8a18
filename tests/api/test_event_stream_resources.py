"""What an open event stream costs the API process, and that a client leaving gives it all back.

These look inside the process (its stream count, its connection pool), so the API runs in this
test's event loop under a real uvicorn server on a real socket, rather than as the shared process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.main import create_app
from api.routes.events import TOO_MANY_STREAMS, EventStreams
from devstack.servers import free_port
from tests import images
from tests.sse import EventReader
from tests.waiting import eventually


@pytest.fixture
async def local_api(stack_env: dict[str, str]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        assert not serving.done(), "the in-process API stopped while starting"
        return server.started

    await eventually(started, what="the in-process API started")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield app, client
    finally:
        server.should_exit = True
        await serving


async def pending_task(client: httpx.AsyncClient) -> int:
    # No worker runs in these tests: the task stays pending, so its stream stays open.
    uploaded = await client.post("/upload", files={"file": ("s.jpg", images.jpeg(64, 48), "image/jpeg")})
    assert uploaded.status_code == 200, uploaded.text
    return uploaded.json()["task_id"]


async def test_a_stream_holds_no_database_connection_and_a_leaving_client_frees_its_slot(
    local_api: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = local_api
    streams = app.state.event_streams = EventStreams(limit=2)
    pool = app.state.services.engine.pool
    url = f"/tasks/{await pending_task(client)}/events"

    async with client.stream("GET", url) as first, client.stream("GET", url) as second:
        # Readers kept alive: a discarded one would close its connection (a departing client).
        assert (first.status_code, second.status_code) == (200, 200)
        readers = [EventReader(first), EventReader(second)]
        for reader in readers:
            assert await reader.next() is not None
        assert streams.open == 2

        async def no_connection_checked_out() -> bool:
            return pool.checkedout() == 0

        # Between polls nothing is held: no pooled connection, so no transaction either.
        await eventually(no_connection_checked_out, timeout=3, what="no connection held by open streams")

        refused = await client.get(url)
        assert refused.status_code == 503
        assert refused.json() == {"detail": TOO_MANY_STREAMS}

    left = time.monotonic()

    async def all_given_back() -> bool:
        return streams.open == 0

    await eventually(all_given_back, timeout=5, what="both streams' slots given back")
    assert time.monotonic() - left < 2, "a client that leaves is noticed promptly"
    async with client.stream("GET", url) as again:
        assert again.status_code == 200, "a freed slot serves the next client"


async def test_a_quiet_stream_sends_keep_alives_and_ends_after_its_lifetime(
    local_api: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = local_api
    streams = app.state.event_streams = EventStreams(keepalive_seconds=0.5, lifetime_seconds=2)
    url = f"/tasks/{await pending_task(client)}/events"

    async with client.stream("GET", url) as response:
        reader = EventReader(response)
        first = await reader.next()
        opened = time.monotonic()
        after = await reader.next(timeout=10)
        lasted = time.monotonic() - opened

    assert first is not None and first.json()["status"] == "pending"
    assert after is None, "the stream ends by itself, the task still pending (EventSource reconnects)"
    assert 1.5 < lasted < 5
    assert len(reader.comments) >= 2 and set(reader.comments) == {"keep-alive"}

    async def given_back() -> bool:
        return streams.open == 0

    await eventually(given_back, timeout=2, what="the ended stream's slot given back")
