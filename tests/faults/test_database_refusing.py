"""PostgreSQL up but refusing us: connections not allowed (55000), our database dropped (3D000), our
password rotated (28P01). Every route that needs the database answers 503 with Retry-After, as for
a stopped server; nothing is stored; once fixed, the same API process serves again.

Each case runs on a database and a role of its own (password-checked on the local socket), with an
API and a NATS server of its own, so no other test sees the fault.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.main import DATABASE_UNAVAILABLE
from devstack.servers import LocalNats, free_port
from devstack.stack import LocalServers, migrate, running_api
from tests import images
from tests.conftest import TEST_SETTINGS
from tests.waiting import eventually

PASSWORD = "first-password-0123"


@dataclass
class Refusing:
    servers: LocalServers
    database: str
    role: str
    url: str
    uploads: Path
    api_url: str

    def psql(self, sql: str) -> str:
        return self.servers.postgres.psql(sql)

    def end_sessions(self) -> None:
        # What an operator does with the change (and a restart would): sessions open before it go.
        self.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.database}'"
            " AND pid <> pg_backend_pid();"
        )


def _with_password_check(servers: LocalServers, database: str, role: str) -> Callable[[], None]:
    """This role's socket connections to this database need its password (the rest stay `trust`);
    returns how to undo it."""
    hba = Path(servers.postgres.psql("SHOW hba_file;").split("\n")[2].strip())
    before = hba.read_text()
    hba.write_text(f"local {database} {role} scram-sha-256\n{before}")
    servers.postgres.psql("SELECT pg_reload_conf();")

    def undo() -> None:
        hba.write_text(before)
        servers.postgres.psql("SELECT pg_reload_conf();")

    return undo


@pytest.fixture
def refusing(servers: LocalServers, workdir: Path) -> Iterator[Refusing]:
    suffix = uuid.uuid4().hex[:8]
    database, role = f"refusing_{suffix}", f"refusing_{suffix}"
    root = workdir / database
    servers.postgres.psql(
        f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'; CREATE DATABASE {database} OWNER {role};"
    )
    undo_hba = _with_password_check(servers, database, role)
    url = servers.postgres.url(database).replace("postgres@", f"{role}:{PASSWORD}@", 1)
    nats_server = LocalNats(root / "nats", free_port(), log_file=root / "nats.log")
    nats_server.start()
    env = {
        **TEST_SETTINGS,
        "DATABASE_URL": url,
        "NATS_URL": nats_server.url,
        "UPLOADS_DIR": str(root / "uploads"),
        "PROCESSED_DIR": str(root / "processed"),
    }
    try:
        migrate(url)
        with running_api(env, log_file=root / "api.log") as api_url:
            yield Refusing(servers, database, role, url, root / "uploads", api_url)
    finally:
        nats_server.stop()
        undo_hba()
        servers.postgres.psql(
            f"ALTER DATABASE {database} ALLOW_CONNECTIONS true;"
            f" DROP DATABASE IF EXISTS {database} WITH (FORCE); DROP ROLE IF EXISTS {role};"
        )


async def _refusal_sqlstate(url: str) -> str | None:
    """What the server says to a new connection now (proof that the fault is the one meant)."""
    try:
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    except asyncpg.PostgresError as exc:
        return exc.sqlstate
    await connection.close()
    return None


def _break(refusing: Refusing, fault: str) -> None:
    if fault == "connections not allowed":
        refusing.psql(f"ALTER DATABASE {refusing.database} ALLOW_CONNECTIONS false;")
        refusing.end_sessions()
    elif fault == "database dropped":
        refusing.psql(f"DROP DATABASE {refusing.database} WITH (FORCE);")
    else:
        refusing.psql(f"ALTER ROLE {refusing.role} PASSWORD 'rotated-password-456';")
        refusing.end_sessions()


def _fix(refusing: Refusing, fault: str) -> None:
    if fault == "connections not allowed":
        refusing.psql(f"ALTER DATABASE {refusing.database} ALLOW_CONNECTIONS true;")
    elif fault == "database dropped":
        refusing.psql(f"CREATE DATABASE {refusing.database} OWNER {refusing.role};")
        migrate(refusing.url)
    else:
        refusing.psql(f"ALTER ROLE {refusing.role} PASSWORD '{PASSWORD}';")


def _assert_unavailable(response: httpx.Response, what: str) -> None:
    assert response.status_code == 503, (what, response.status_code, response.text[:300])
    assert response.headers.get("retry-after"), what
    assert response.json() == {"detail": DATABASE_UNAVAILABLE}, what


@pytest.mark.parametrize(
    ("fault", "sqlstate"),
    [("connections not allowed", "55000"), ("database dropped", "3D000"), ("password rotated", "28P01")],
)
async def test_a_database_refusing_connections_is_a_503_and_the_api_recovers_by_itself(
    refusing: Refusing, fault: str, sqlstate: str
) -> None:
    async with httpx.AsyncClient(base_url=refusing.api_url, timeout=30) as client:
        created = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})
        assert created.status_code == 200
        task_id = created.json()["task_id"]
        files_before = set(refusing.uploads.iterdir())

        _break(refusing, fault)
        assert await _refusal_sqlstate(refusing.url) == sqlstate

        for _ in range(3):  # more than once: no pooled connection is left to hide the fault
            upload = await client.post("/upload", files={"file": ("b.jpg", images.jpeg(), "image/jpeg")})
            _assert_unavailable(upload, "upload")
            keyed = await client.post(
                "/upload",
                files={"file": ("c.jpg", images.jpeg(), "image/jpeg")},
                headers={"Idempotency-Key": f"refused-{uuid.uuid4().hex}"},
            )
            _assert_unavailable(keyed, "upload with an Idempotency-Key")
            for path in (
                f"/status/{task_id}",
                f"/tasks/{task_id}",
                "/tasks",
                f"/result/{task_id}",
                "/gallery",
            ):
                _assert_unavailable(await client.get(path), path)
        assert set(refusing.uploads.iterdir()) == files_before
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["database"] == "unreachable"
        # Liveness checks nothing else on purpose: a restart would not fix this.
        assert (await client.get("/health")).status_code == 200

        _fix(refusing, fault)

        async def serving() -> bool:
            return (await client.get("/ready")).status_code == 200

        await eventually(serving, timeout=30, what=f"/ready answering 200 once fixed ({fault})")
        again = await client.post("/upload", files={"file": ("d.jpg", images.jpeg(), "image/jpeg")})
        assert again.status_code == 200, again.text
        status = await client.get(f"/status/{again.json()['task_id']}")
        assert status.status_code == 200
