"""With PostgreSQL stopped, the API says so (503), stores nothing, and recovers by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
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


async def test_an_upload_whose_insert_the_server_cuts_off_answers_503_and_leaves_no_file(
    client: httpx.AsyncClient, uploads_dir: Path, stack_env: dict[str, str]
) -> None:
    """The server terminates the API's connection while its INSERT waits (as a shutdown does): the
    statement never committed, so the upload's file must go too."""
    before = set(uploads_dir.iterdir())
    dsn = stack_env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(dsn)
    try:
        async with admin.transaction():
            await admin.execute("LOCK TABLE image_tasks IN ACCESS EXCLUSIVE MODE")
            upload = asyncio.create_task(
                client.post("/upload", files={"file": ("cut.jpg", images.jpeg(), "image/jpeg")})
            )
            waiting: list[int] = []
            activity: list[str] = []

            async def insert_waits_for_the_lock() -> bool:
                # A prepared statement that waits for a lock while it is bound still shows its
                # connection's previous statement ("idle"), so the INSERT is found by its lock: a
                # row-exclusive one on image_tasks not granted, on a connection of the API's driver
                # pool (which runs only the INSERT and the queued mark).
                rows = await admin.fetch(
                    "SELECT a.pid, a.state, left(a.query, 70) AS query, l.mode, l.granted"
                    " FROM pg_stat_activity a LEFT JOIN pg_locks l"
                    " ON l.pid = a.pid AND l.relation = 'image_tasks'::regclass"
                    " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
                )
                activity[:] = [str(dict(row)) for row in rows]
                waiting[:] = [
                    row["pid"]
                    for row in rows
                    if row["mode"] == "RowExclusiveLock"
                    and not row["granted"]
                    and _driver_pool_statement(row["query"] or "")
                ]
                return bool(waiting)

            await eventually(
                insert_waits_for_the_lock,
                what=lambda: "the upload's INSERT waiting for the lock; activity:\n" + "\n".join(activity),
            )
            await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", waiting)
            response = await upload
    finally:
        await admin.close()

    assert response.status_code == 503, response.text
    assert response.json() == {"detail": DATABASE_UNAVAILABLE}
    assert set(uploads_dir.iterdir()) == before


def _driver_pool_statement(query: str) -> bool:
    """Whether `query` (a connection's last statement) is one the API's driver pool runs; empty on a
    connection that has run nothing yet."""
    return not query or query.startswith(("INSERT INTO image_tasks", "UPDATE image_tasks SET queued_at"))
