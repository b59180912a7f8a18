"""A stack of its own for the `nats` storage backend: a private NATS server and database, and an
API (and, on request, a worker) started on them with STORAGE_BACKEND=nats.

Private so that stopping its NATS server disturbs no other test, and so that the session's API
relays none of its rows. Used by tests/test_nats_storage.py and by the fault test that stops that
server (tests/faults/test_nats_storage_outage.py), each of which starts its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.storage import Folders
from devstack.servers import LocalNats, free_port
from devstack.stack import LocalServers, migrate, running_api, start_worker, stop_process
from tests.conftest import TEST_SETTINGS


@dataclass(frozen=True)
class NatsStack:
    nats: LocalNats
    env: dict[str, str]
    folders: Folders
    database_url: str
    api_url: str


@contextmanager
def running_nats_stack(servers: LocalServers, workdir: Path) -> Iterator[NatsStack]:
    nats_server = LocalNats(workdir / "nats", free_port(), log_file=workdir / "nats.log")
    nats_server.start()
    database = f"imagequeue_objects_{uuid.uuid4().hex[:8]}"
    servers.postgres.psql(f"CREATE DATABASE {database};")
    database_url = servers.postgres.url(database)
    folders = Folders(workdir / "uploads", workdir / "processed")
    env = {
        **TEST_SETTINGS,
        "DATABASE_URL": database_url,
        "NATS_URL": nats_server.url,
        "STORAGE_BACKEND": "nats",
        "UPLOADS_DIR": str(folders.uploads_dir),
        "PROCESSED_DIR": str(folders.processed_dir),
    }
    try:
        migrate(database_url)
        with running_api(env, log_file=workdir / "api.log") as api_url:
            yield NatsStack(nats_server, env, folders, database_url, api_url)
    finally:
        nats_server.stop()
        servers.postgres.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")


@contextmanager
def running_worker(stack: NatsStack) -> Iterator[None]:
    """A worker process on the stack; it must stop cleanly."""
    log_file = stack.folders.uploads_dir.parent / "worker.log"
    process = start_worker(stack.env, log_file=log_file)
    yield
    assert stop_process(process) == 0, log_file.read_text()[-3000:]


def scratch_files(folders: Folders) -> list[Path]:
    return [*folders.uploads_dir.iterdir(), *folders.processed_dir.iterdir()]


async def upload(api: httpx.AsyncClient, data: bytes, name: str, **fields: str) -> int:
    response = await api.post(
        "/upload", files={"file": (name, data, "application/octet-stream")}, data=fields
    )
    assert response.status_code == 200, response.text
    return response.json()["task_id"]
