"""Fixtures: a real PostgreSQL and NATS JetStream for the whole session, migrated by Alembic, and
the real API started as a process (uvicorn) on a free port.

The settings go to every process through the environment, as in production; this process's own
environment gets them too, so in-process code (`get_settings()`) sees the same servers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from config import get_settings
from devstack.servers import free_port
from devstack.stack import LocalServers, migrate, running_api, start_worker, stop_process
from tests.database import session_on
from tests.leftovers import clear_waiting_work

# Small limits keep the refusal tests cheap; the worker tests shorten the redelivery delays.
TEST_SETTINGS = {
    "MAX_UPLOAD_BYTES": "1000000",
    "MAX_IMAGE_PIXELS": "40000000",
    "MAX_FRAMES": "50",
    "ACK_WAIT_SECONDS": "5",
    "RETRY_DELAY_SECONDS": "0.5",
    "OUTBOX_INTERVAL_SECONDS": "0.5",
    # No dispatch window: the suite shares one database and stream, and many tests queue tasks that
    # no worker takes; a window would fill with them and hold back later tests' tasks, as a window
    # should. tests/api/test_priorities.py runs the window on a stack of its own.
    "DISPATCH_WINDOW": "0",
    "MAX_ATTEMPTS": "3",
    # The shortest lease allowed: the API sweeps every tenth of it (6 s).
    "LOST_AFTER_SECONDS": "60",
    "WORKER_CONCURRENCY": "2",
    "LOG_LEVEL": "INFO",
    # Off unless a test asks: workers started side by side (and other suites on this host) would
    # contend for the one default port.
    "WORKER_METRICS_PORT": "0",
    # Callbacks on, to receivers the tests run on loopback, retried quickly.
    "WEBHOOK_SECRET": "test-callback-secret-0123",
    "WEBHOOK_ALLOW_PRIVATE": "true",
    "WEBHOOK_MAX_ATTEMPTS": "3",
    "WEBHOOK_RETRY_SECONDS": "0.2",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
}


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="imagequeue-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def servers(workdir: Path) -> Iterator[LocalServers]:
    local = LocalServers(workdir / "servers", nats_port=free_port())
    local.start()
    try:
        migrate(local.postgres.url())
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def stack_env(servers: LocalServers, workdir: Path) -> Iterator[dict[str, str]]:
    env = servers.environment(
        UPLOADS_DIR=str(workdir / "uploads"),
        PROCESSED_DIR=str(workdir / "processed"),
        **TEST_SETTINGS,
    )
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    get_settings.cache_clear()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def no_work_left_by_earlier_modules(request: pytest.FixtureRequest) -> None:
    """Before each module on the session's stack: end the work earlier modules left waiting
    (tests/leftovers.py), so its workers, counts and queue depths see only its own. Modules that
    never touch the stack do not start it for this."""
    module_items = [item for item in request.session.items if item.module is request.module]
    if not any("stack_env" in getattr(item, "fixturenames", ()) for item in module_items):
        return
    env: dict[str, str] = request.getfixturevalue("stack_env")
    asyncio.run(clear_waiting_work(env["DATABASE_URL"], env["NATS_URL"]))


@pytest.fixture(scope="session")
def api_process(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """The real API under uvicorn; yields its base URL."""
    with running_api(stack_env, log_file=workdir / "api.log") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def heartbeat_file(workdir: Path) -> Path:
    return workdir / "worker.heartbeat"


@pytest.fixture(scope="module")
def worker_process(
    stack_env: dict[str, str], workdir: Path, heartbeat_file: Path
) -> Iterator[subprocess.Popen]:
    """A real worker process for the tests of one module; it must stop cleanly (exit 0)."""
    env = {**stack_env, "WORKER_HEARTBEAT_FILE": str(heartbeat_file)}
    process = start_worker(env, log_file=workdir / "worker.log")
    yield process
    assert stop_process(process) == 0, (workdir / "worker.log").read_text()[-3000:]


@pytest.fixture
async def client(api_process: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_process, timeout=30) as http:
        yield http


@pytest.fixture
async def db(stack_env: dict[str, str]) -> AsyncIterator[AsyncSession]:
    """A session on the test database, for looking at rows the way the services left them."""
    async with session_on(stack_env["DATABASE_URL"]) as session:
        yield session


@pytest.fixture
def processed_dir(stack_env: dict[str, str]) -> Path:
    return Path(stack_env["PROCESSED_DIR"])


@pytest.fixture
def uploads_dir(stack_env: dict[str, str]) -> Path:
    return Path(stack_env["UPLOADS_DIR"])
