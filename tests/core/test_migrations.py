"""The Alembic migrations build exactly the schema the models describe, undo it, and bring old rows
up to what the code expects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from api.schemas import task_status
from config import get_settings
from core.db import Base
from core.models import ImageTask
from core.processing.forms import resolve
from core.processing.outputs import Processing
from core.processing.presets import BUILTIN_PRESETS
from devstack.stack import PROJECT_ROOT, LocalServers

DATABASE = "migrations_check"


@pytest.fixture
def empty_database(servers: LocalServers) -> str:
    servers.postgres.psql(f"DROP DATABASE IF EXISTS {DATABASE}; CREATE DATABASE {DATABASE};")
    return servers.postgres.url(DATABASE)


def alembic_config(url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


async def _schema_report(url: str) -> tuple[list, list[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: (
                    compare_metadata(MigrationContext.configure(sync), Base.metadata),
                    inspect(sync).get_table_names(),
                )
            )
    finally:
        await engine.dispose()


def test_upgrade_matches_the_models_and_downgrade_removes_everything(empty_database: str) -> None:
    config = alembic_config(empty_database)

    command.upgrade(config, "head")
    differences, tables = asyncio.run(_schema_report(empty_database))
    assert differences == [], f"models and migrations disagree: {differences}"
    assert "image_tasks" in tables

    command.downgrade(config, "base")
    _, tables = asyncio.run(_schema_report(empty_database))
    assert tables == ["alembic_version"]

    command.upgrade(config, "head")
    differences, _ = asyncio.run(_schema_report(empty_database))
    assert differences == []


# Rows as the code wrote them before tasks stored their processing and outputs (revision 8f3a2c4d6e10
# added the columns, NULL on every older row), and as it writes them now.
BEFORE_BACKFILL = "3d9e7f1a2b45"
LEGACY_TEXT = "Stamped before presets"
_ROW = (
    "INSERT INTO image_tasks (id, filename, status, content_type, size_bytes, width, height, sha256,"
    " input_name, output_name, processing, outputs) VALUES (:id, 'a.jpg', :status, 'image/jpeg', 10, 4, 3,"
    " repeat('0', 64), :input_name, :output_name, CAST(:processing AS jsonb), CAST(:outputs AS jsonb))"
)
_NEW_PROCESSING = {"outputs": [{"name": "image", "preset": "thumbnail", "ops": [{"op": "grayscale"}]}]}
_NEW_OUTPUTS = [
    {
        "name": "image",
        "file": "new.png",
        "format": "PNG",
        "width": 4,
        "height": 3,
        "frames": 1,
        "size_bytes": 99,
    }
]
_ROWS = [
    # id, status, input_name, output_name, processing, outputs
    (1, "pending", "pending.jpg", None, None, None),
    (2, "done", "photo.jpg", "photo.jpg", None, None),
    (3, "done", "anim.gif", "anim.gif", None, None),
    (4, "failed", "bad.webp", None, None, None),
    (5, "done", "new.png", "new.png", _NEW_PROCESSING, _NEW_OUTPUTS),
]


@pytest.fixture
def legacy_watermark_text(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The WATERMARK_TEXT the migration runs with (it reads the settings, as `alembic upgrade` does)."""
    monkeypatch.setenv("WATERMARK_TEXT", LEGACY_TEXT)
    get_settings.cache_clear()
    yield LEGACY_TEXT
    monkeypatch.undo()
    get_settings.cache_clear()


async def _insert_old_rows(url: str) -> None:
    await _insert_rows(url, _ROWS)


async def _insert_rows(url: str, rows: list[tuple]) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for task_id, status, input_name, output_name, processing, outputs in rows:
                await connection.execute(
                    text(_ROW),
                    {
                        "id": task_id,
                        "status": status,
                        "input_name": input_name,
                        "output_name": output_name,
                        "processing": None if processing is None else json.dumps(processing),
                        "outputs": None if outputs is None else json.dumps(outputs),
                    },
                )
    finally:
        await engine.dispose()


async def _tasks(url: str) -> dict[int, ImageTask]:
    engine = create_async_engine(url)
    try:
        async with AsyncSession(engine) as session:
            return {task.id: task for task in await session.scalars(select(ImageTask))}
    finally:
        await engine.dispose()


async def _columns(url: str) -> dict[int, tuple[Any, Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, processing, outputs FROM image_tasks"))
            return {row.id: (row.processing, row.outputs) for row in rows}
    finally:
        await engine.dispose()


def test_rows_from_before_processing_and_outputs_get_what_the_code_now_expects(
    empty_database: str, legacy_watermark_text: str
) -> None:
    config = alembic_config(empty_database)
    command.upgrade(config, BEFORE_BACKFILL)
    asyncio.run(_insert_old_rows(empty_database))

    command.upgrade(config, "head")
    tasks = asyncio.run(_tasks(empty_database))

    # What the worker ran for such rows: the default preset with the text configured.
    expected = resolve(
        preset=None, ops=None, outputs=None, presets=BUILTIN_PRESETS, watermark_text=LEGACY_TEXT
    )
    for task_id in (1, 2, 3, 4):
        assert Processing.from_json(tasks[task_id].processing) == expected, task_id
    assert tasks[5].processing == _NEW_PROCESSING
    # Their one file, in the shape the worker records, with the figures nobody kept left null.
    assert tasks[2].outputs == [
        {"name": "image", "file": "photo.jpg", "format": "JPEG"}
        | {"width": None, "height": None, "frames": None, "size_bytes": None}
    ]
    assert tasks[3].outputs is not None and tasks[3].outputs[0]["format"] == "GIF"
    assert tasks[1].outputs is None and tasks[4].outputs is None
    assert tasks[5].outputs == _NEW_OUTPUTS
    # The API reads them.
    status = task_status(tasks[2])
    assert status.processed_url == "/processed/photo.jpg"
    assert status.processing is not None and status.processing[0].preset == "default"
    assert status.outputs is not None
    assert status.outputs[0].model_dump() == {
        "name": "image",
        "url": "/processed/photo.jpg",
        "content_type": "image/jpeg",
        "width": None,
        "height": None,
        "frames": None,
        "size_bytes": None,
    }

    # Down again: the previous code cannot read the null figures, so those outputs go; the rest stays.
    command.downgrade(config, BEFORE_BACKFILL)
    columns = asyncio.run(_columns(empty_database))
    assert columns[2][1] is None and columns[3][1] is None
    assert columns[5] == (_NEW_PROCESSING, _NEW_OUTPUTS)
    assert columns[1][0] == expected.to_json()


# Our head before the original design's takeover (33d3e37439e0 at the base, 9e4b1d7c2a58 after this).
BEFORE_TAKEOVER = "6b2d8e4f1a37"
# Its last revision (later ones add columns of their own).
AFTER_TAKEOVER = "d3f5a7c9e1b2"


async def _rows(url: str) -> list[tuple]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT * FROM image_tasks ORDER BY id"))
            return [tuple(row) for row in rows]
    finally:
        await engine.dispose()


def test_a_database_of_ours_is_not_touched_by_the_original_designs_takeover(empty_database: str) -> None:
    config = alembic_config(empty_database)
    command.upgrade(config, BEFORE_TAKEOVER)
    asyncio.run(_insert_rows(empty_database, [row for row in _ROWS if row[4] is not None]))
    before = asyncio.run(_rows(empty_database))

    command.upgrade(config, AFTER_TAKEOVER)
    after = asyncio.run(_rows(empty_database))
    command.upgrade(config, "head")

    assert after == before
    differences, tables = asyncio.run(_schema_report(empty_database))
    assert differences == [] and "image_tasks_original" not in tables


async def _sql(url: str, *statements: str) -> list[str]:
    """Run each statement on its own (autocommit); the first column of the last one's rows."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            rows: list[str] = []
            for statement in statements:
                result = await connection.execute(text(statement))
                rows = [row[0] for row in result] if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


def test_the_waiting_index_upgrade_runs_again_after_dying_past_its_drop(empty_database: str) -> None:
    """Each CONCURRENTLY statement commits on its own: a run killed after the old index's drop but
    before the version row moved must not stop every later `alembic upgrade head`."""
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    command.downgrade(config, "4f2a9e6c1d83")
    # What such a run leaves: the new index built, the old one dropped, the version not moved.
    asyncio.run(
        _sql(
            empty_database,
            "CREATE INDEX ix_image_tasks_waiting_heads ON image_tasks (priority, COALESCE(owner, ''), id)"
            " WHERE queued_at IS NULL AND status = 'pending'",
            "DROP INDEX ix_image_tasks_waiting",
        )
    )
    command.upgrade(config, "head")
    waiting = asyncio.run(
        _sql(empty_database, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%tasks_waiting%'")
    )
    assert waiting == ["ix_image_tasks_waiting_heads"]
