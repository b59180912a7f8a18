"""With PostgreSQL stopped, the API says so (503), stores nothing, and recovers by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.main import DATABASE_UNAVAILABLE
from devstack.stack import LocalServers
from tests import images


@pytest.fixture
def postgres_stopped(servers: LocalServers, api_process: str) -> Iterator[None]:
    servers.postgres.stop()
    try:
        yield
    finally:
        servers.postgres.start()


async def wait_for_status(
    client: httpx.AsyncClient, path: str, status: int, timeout: float = 20
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


async def test_upload_answers_503_and_leaves_no_file_while_the_database_is_down(
    client: httpx.AsyncClient, uploads_dir: Path, servers: LocalServers, postgres_stopped: None
) -> None:
    before = set(uploads_dir.iterdir())

    response = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})
    ready = await client.get("/ready")

    assert response.status_code == 503
    assert response.json() == {"detail": DATABASE_UNAVAILABLE}
    assert set(uploads_dir.iterdir()) == before
    assert ready.status_code == 503
    assert ready.json()["database"] == "unreachable"
    assert ready.json()["nats"] == "ok"

    servers.postgres.start()
    recovered = await wait_for_status(client, "/ready", 200)
    assert recovered.status_code == 200
    retry = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})
    assert retry.status_code == 200
