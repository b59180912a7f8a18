"""With PostgreSQL stopped, the API says so (503), stores nothing, and recovers by itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.main import DATABASE_UNAVAILABLE
from devstack.stack import LocalServers
from tests import images
from tests.waiting import eventually


@pytest.fixture
def postgres_stopped(servers: LocalServers, api_process: str) -> Iterator[None]:
    servers.postgres.stop()
    try:
        yield
    finally:
        servers.postgres.start()


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

    async def recovered() -> bool:
        return (await client.get("/ready")).status_code == 200

    await eventually(recovered, timeout=20, what="/ready answering 200 once PostgreSQL is back")
    retry = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})
    assert retry.status_code == 200
