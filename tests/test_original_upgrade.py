"""A deployment of the original design upgraded in place: its database (made as its migration
33d3e37439e0 makes it), its rows and its files, then `alembic upgrade head` and our stack on it.

On a private database and NATS server, so the session's API relays none of these rows and no other
test's messages reach this worker.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.servers import LocalNats, free_port
from devstack.stack import PROJECT_ROOT, LocalServers, running_api, start_worker, stop_process
from tests.conftest import TEST_SETTINGS
from tests.images import jpeg, png
from tests.waiting import final_status

# The original design's schema as its one migration (33d3e37439e0) builds it: an unnamed primary key
# (PostgreSQL names it image_tasks_pkey), a SERIAL id, a native enum and an index on the id.
_ORIGINAL = sa.MetaData()
sa.Table(
    "image_tasks",
    _ORIGINAL,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("filename", sa.String(), nullable=False),
    sa.Column("status", sa.Enum("pending", "processing", "done", name="taskstatus"), nullable=False),
    sa.Column("upload_time", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_image_tasks_id", "id"),
)
ORIGINAL_REVISION = "33d3e37439e0"
OLD_TIME = datetime(2025, 8, 1, 12, 30, tzinfo=UTC)

# (file name, status, files the original left: upload, result)
ROWS = [
    ("done.jpg", "done", True, True),
    ("test_image.JPG", "pending", True, False),
    ("busy.png", "processing", True, False),
    ("gone.gif", "pending", False, False),
    ("lost result.jpg", "done", True, False),
    ("scan.tif", "pending", True, False),  # a format the original's Pillow took, and ours does now
]


async def _build_original(url: str) -> dict[str, int]:
    """The schema, stamped as the original left it, and its rows as its API wrote them."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_ORIGINAL.create_all)
            await connection.execute(
                sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
            )
            await connection.execute(sa.text(f"INSERT INTO alembic_version VALUES ('{ORIGINAL_REVISION}')"))
            ids = {}
            for filename, status, _, _ in ROWS:
                ids[filename] = await connection.scalar(
                    sa.text(
                        "INSERT INTO image_tasks (filename, status, upload_time)"
                        " VALUES (:filename, :status, :time) RETURNING id"
                    ),
                    {"filename": filename, "status": status, "time": OLD_TIME},
                )
            return ids
    finally:
        await engine.dispose()


async def _scalars(url: str, query: str) -> list:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(sa.text(query))).scalars())
    finally:
        await engine.dispose()


@pytest.fixture
def original_deployment(servers: LocalServers, workdir: Path) -> Iterator[dict]:
    root = workdir / f"original-{uuid.uuid4().hex[:8]}"
    uploads, processed = root / "uploads", root / "processed"
    uploads.mkdir(parents=True)
    processed.mkdir()
    database = f"imagequeue_original_{uuid.uuid4().hex[:8]}"
    servers.postgres.psql(f"CREATE DATABASE {database};")
    url = servers.postgres.url(database)
    nats_server = LocalNats(root / "nats", free_port(), log_file=root / "nats.log")
    nats_server.start()
    try:
        ids = asyncio.run(_build_original(url))
        # Its files under the clients' names, as its API and worker wrote them.
        for filename, _, has_upload, has_result in ROWS:
            data = jpeg(64, 48) if filename.endswith(("jpg", "JPG")) else png(64, 48)
            if filename.endswith(".tif"):
                buffer = io.BytesIO()
                Image.new("RGB", (64, 48), (10, 200, 30)).save(buffer, "TIFF", compression="tiff_lzw")
                data = buffer.getvalue()
            if has_upload:
                (uploads / filename).write_bytes(data)
            if has_result:
                (processed / filename).write_bytes(data)
        env = {
            **TEST_SETTINGS,
            "DATABASE_URL": url,
            "NATS_URL": nats_server.url,
            "UPLOADS_DIR": str(uploads),
            "PROCESSED_DIR": str(processed),
        }
        yield {"env": env, "ids": ids, "url": url, "root": root, "uploads": uploads}
    finally:
        nats_server.stop()
        servers.postgres.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")


def _alembic(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


async def test_the_original_designs_database_upgrades_in_place_and_its_tasks_are_served(
    original_deployment: dict,
) -> None:
    env, ids, url = original_deployment["env"], original_deployment["ids"], original_deployment["url"]
    upgraded = _alembic(env, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]

    # Nothing of the old schema is left beside ours; new ids continue after the old ones.
    assert await _scalars(url, "SELECT to_regclass('image_tasks_original')::text") == [None]
    assert await _scalars(url, "SELECT count(*) FROM pg_type WHERE typname = 'taskstatus'") == [0]
    statuses = dict(
        zip(
            *await asyncio.gather(
                _scalars(url, "SELECT filename FROM image_tasks ORDER BY id"),
                _scalars(url, "SELECT status FROM image_tasks ORDER BY id"),
            ),
            strict=True,
        )
    )
    assert statuses == {
        "done.jpg": "done",
        "test_image.JPG": "pending",
        "busy.png": "pending",  # its worker is gone: processed anew
        "gone.gif": "failed",  # no file to process
        "lost result.jpg": "pending",  # its upload is there, its result is not: made again
        "scan.tif": "pending",
    }
    # The original files stay where they were.
    assert (original_deployment["uploads"] / "test_image.JPG").is_file()

    root = original_deployment["root"]
    worker = start_worker(env, log_file=root / "worker.log")
    try:
        with running_api(env, log_file=root / "api.log") as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                old = (await client.get(f"/status/{ids['done.jpg']}")).json()
                assert old["status"] == "done" and old["filename"] == "done.jpg"
                assert datetime.fromisoformat(old["upload_time"]) == OLD_TIME
                served = await client.get(old["processed_url"])
                assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"

                for name in ("test_image.JPG", "busy.png", "lost result.jpg", "scan.tif"):
                    final = await final_status(client, ids[name], timeout=90)
                    assert final["status"] == "done", final
                    assert datetime.fromisoformat(final["upload_time"]) == OLD_TIME
                gone = (await client.get(f"/status/{ids['gone.gif']}")).json()
                assert gone["status"] == "failed" and "UPLOADS_DIR" in gone["error"]

                # The original's bookmarks lead to the newest task of that name.
                page = await client.get("/result/test_image.JPG")
                assert page.status_code == 303
                assert page.headers["location"] == f"/result/{ids['test_image.JPG']}"
                image = await client.get("/processed/test_image.JPG", follow_redirects=True)
                assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"

                # New uploads get ids after the old ones.
                new = await client.post("/upload", files={"file": ("new.png", png(), "image/png")})
                assert new.status_code == 200 and new.json()["task_id"] > max(ids.values())
    finally:
        assert stop_process(worker) == 0, (root / "worker.log").read_text()[-3000:]


def test_without_the_original_folders_the_upgrade_stops_and_changes_nothing(
    original_deployment: dict, tmp_path: Path
) -> None:
    env = {
        **original_deployment["env"],
        "UPLOADS_DIR": str(tmp_path / "u"),
        "PROCESSED_DIR": str(tmp_path / "p"),
    }
    failed = _alembic(env, "upgrade", "head")
    assert failed.returncode != 0 and "Run the upgrade with both set" in failed.stderr
    # One transaction: the database is still the original design's.
    url = original_deployment["url"]
    assert asyncio.run(_scalars(url, "SELECT version_num FROM alembic_version")) == [ORIGINAL_REVISION]
    assert asyncio.run(_scalars(url, "SELECT count(*) FROM image_tasks")) == [len(ROWS)]
    # And once given its folders, it goes through.
    assert _alembic(original_deployment["env"], "upgrade", "head").returncode == 0
