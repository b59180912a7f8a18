"""An API whose NATS stops answering (the connection up, nothing coming back: a node frozen, a
network partition) still shuts down within a bound on SIGTERM, with its outbox relay caught inside
a publish, instead of waiting on NATS until the orchestrator's SIGKILL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from devstack.servers import free_port
from devstack.stack import LocalServers, migrate
from tests import images
from tests.database import session_on
from tests.faults.burst import new_prefix
from tests.faults.link import Link
from tests.faults.outcome import rows_named
from tests.faults.processes import Started, api_ready, assert_api_shut_down_cleanly

# Below the 30 s after which Kubernetes (deploy/k8s/api.yaml) and stop_process send SIGKILL.
SHUTDOWN_BOUND_SECONDS = 10


@pytest.fixture
def own_database(servers: LocalServers) -> Iterator[str]:
    """A database of the test's own: the session's API, whose NATS answers, must not relay the
    row this test's API keeps trying to publish."""
    name = f"imagequeue_silent_{uuid.uuid4().hex[:8]}"
    servers.postgres.psql(f"CREATE DATABASE {name};")
    url = servers.postgres.url(name)
    try:
        migrate(url)
        yield url
    finally:
        servers.postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


async def test_an_api_whose_nats_went_silent_shuts_down_within_the_bound(
    servers: LocalServers, apis: Callable[..., Started], own_database: str, tmp_path: Path
) -> None:
    prefix = new_prefix("silent-nats")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with Link(servers.nats.port) as link, session_on(own_database) as db:
        api = apis(
            "fault-api-silent-nats",
            port,
            NATS_URL=link.url,
            DATABASE_URL=own_database,
            UPLOADS_DIR=str(tmp_path / "uploads"),
            PROCESSED_DIR=str(tmp_path / "processed"),
        )
        await api_ready(api, base_url)
        link.cut()
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            # Its publish waits out its timeout; meanwhile the relay takes the row up (after its
            # grace) and waits inside a publish of its own, which SIGTERM finds under way.
            response = await client.post(
                "/upload", files={"file": (f"{prefix}.jpg", images.jpeg(), "image/jpeg")}
            )
        assert response.status_code == 200, response.text
        [row] = await rows_named(db, prefix)
        assert row.queued_at is None, "the publish should have had no answer"

        started = time.monotonic()
        exit_code = await asyncio.wait_for(api.stop(), SHUTDOWN_BOUND_SECONDS + 15)
        elapsed = time.monotonic() - started

    assert_api_shut_down_cleanly(api, exit_code)
    assert elapsed < SHUTDOWN_BOUND_SECONDS, f"shutdown took {elapsed:.1f} s:\n{api.log_tail()}"
