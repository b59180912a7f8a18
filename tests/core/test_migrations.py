"""The Alembic migrations build exactly the schema the models describe, and undo it."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from core.db import Base
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
