"""DriverStatement and the driver pool: statements written against the model, run on bare asyncpg."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import Interval, func, insert, select, update
from sqlalchemy.dialects.postgresql import JSONB

from core.db import DriverStatement, is_database_unavailable, make_driver_pool, placeholder
from core.models import ImageTask, TaskStatus, finished_values
from devstack.servers import free_port

_TEST_ROW = "driver-statement-"
# Every row states its processing; these tests never run it.
_PROCESSING = json.dumps({"outputs": [{"name": "image", "preset": None, "ops": [{"op": "grayscale"}]}]})


@pytest.fixture
async def database(stack_env: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    """The shared test database; the rows these tests make (not real tasks) are deleted after each."""
    pool = await make_driver_pool(stack_env["DATABASE_URL"], max_size=2)
    yield pool
    await pool.execute(f"DELETE FROM image_tasks WHERE input_name LIKE '{_TEST_ROW}%'")
    await pool.close()


async def _insert_task(pool: asyncpg.Pool, **columns: object) -> int:
    values = {
        "filename": "a.jpg",
        "content_type": "image/jpeg",
        "size_bytes": 1,
        "width": 1,
        "height": 1,
        "sha256": "0" * 64,
        "input_name": f"{_TEST_ROW}{uuid.uuid4().hex}.jpg",
        "processing": _PROCESSING,
        **columns,
    }
    names = ", ".join(values)
    placeholders = ", ".join(f"${index}" for index in range(1, len(values) + 1))
    return await pool.fetchval(
        f"INSERT INTO image_tasks ({names}) VALUES ({placeholders}) RETURNING id", *values.values()
    )


def test_values_are_placed_by_name_and_constants_keep_their_compiled_values() -> None:
    statement = DriverStatement.of(
        update(ImageTask)
        .where(
            ImageTask.id == placeholder("task_id"),
            ImageTask.status.in_((TaskStatus.PENDING, TaskStatus.PROCESSING)),
        )
        .values(error=placeholder("reason"), status=TaskStatus.FAILED),
        "task_id",
        "reason",
    )

    args = statement.args(reason="broken", task_id=7)

    assert statement.sql.count("$") == len(args) == 5
    assert args[statement.names.index("task_id")] == 7
    assert args[statement.names.index("reason")] == "broken"
    assert {TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.FAILED} <= set(args)


def test_missing_unknown_or_undeclared_values_are_refused() -> None:
    statement = DriverStatement.of(
        select(ImageTask.status).where(ImageTask.id == placeholder("task_id")), "task_id"
    )

    with pytest.raises(TypeError, match="task_id"):
        statement.args()
    with pytest.raises(TypeError, match="task_id"):
        statement.args(task_id=1, other=2)
    with pytest.raises(ValueError, match="no such placeholders"):
        DriverStatement.of(select(ImageTask.status), "task_id")


async def test_a_statement_runs_in_one_round_trip_with_the_models_semantics(database: asyncpg.Pool) -> None:
    """finished_values() makes a callback due only where the row has one, as the ORM path does."""
    finish = DriverStatement.of(
        update(ImageTask)
        .where(ImageTask.id == placeholder("task_id"))
        .values(
            status=TaskStatus.DONE,
            outputs=placeholder("outputs", JSONB()),
            started_at=func.now() - placeholder("ago", Interval()),
            **finished_values(),
        )
        .returning(ImageTask.outputs, ImageTask.callback_state, ImageTask.finished_at - ImageTask.started_at),
        "task_id",
        "outputs",
        "ago",
    )
    with_callback = await _insert_task(database, callback_url="https://example.org/hook")
    without = await _insert_task(database)
    outputs = [{"file": "x.jpg", "name": "default"}]

    async with database.acquire() as connection:
        first = await connection.fetchrow(
            finish.sql,
            *finish.args(task_id=with_callback, outputs=json.dumps(outputs), ago=timedelta(hours=1)),
        )
        second = await connection.fetchrow(
            finish.sql, *finish.args(task_id=without, outputs=json.dumps(outputs), ago=timedelta(hours=1))
        )
        in_transaction = connection.is_in_transaction()

    assert json.loads(first["outputs"]) == outputs
    assert (first["callback_state"], second["callback_state"]) == ("pending", None)
    assert timedelta(minutes=59) < first[2] < timedelta(minutes=61)
    assert not in_transaction, "a DriverStatement commits on its own"


async def test_driver_errors_are_told_apart_from_an_unavailable_database(database: asyncpg.Pool) -> None:
    task_id = await _insert_task(database)
    duplicate = await database.fetchval("SELECT input_name FROM image_tasks WHERE id = $1", task_id)
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await _insert_task(database, input_name=duplicate)

    assert not is_database_unavailable(caught.value)
    assert is_database_unavailable(asyncpg.AdminShutdownError("terminating connection"))
    assert is_database_unavailable(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert is_database_unavailable(asyncpg.InterfaceError("connection is closed"))


async def test_a_pool_on_an_unreachable_server_starts_and_fails_each_use_as_unavailable() -> None:
    pool = await make_driver_pool(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none", max_size=1)
    try:
        with pytest.raises(Exception) as caught:
            await pool.fetchval("SELECT 1")
    finally:
        await pool.close()

    assert is_database_unavailable(caught.value), repr(caught.value)


async def test_an_insert_takes_the_columns_python_defaults_as_the_orm_would(database: asyncpg.Pool) -> None:
    columns = (
        "filename",
        "content_type",
        "size_bytes",
        "width",
        "height",
        "sha256",
        "input_name",
        "processing",
    )
    statement = DriverStatement.of(
        insert(ImageTask)
        .values(**{column: placeholder(column) for column in columns})
        .returning(ImageTask.status, ImageTask.attempts, ImageTask.callback_attempts),
        *columns,
    )
    values = dict(
        zip(
            columns,
            ("a.jpg", "image/jpeg", 1, 1, 1, "0" * 64, f"{_TEST_ROW}{uuid.uuid4().hex}.jpg", _PROCESSING),
            strict=True,
        )
    )

    row = await database.fetchrow(statement.sql, *statement.args(**values))

    assert tuple(row) == ("pending", 0, 0)


async def test_sqlalchemy_url_options_are_understood_by_the_driver_pool(stack_env: dict[str, str]) -> None:
    """`prepared_statement_cache_size` is SQLAlchemy's option (0 behind a transaction-mode PgBouncer);
    asyncpg.connect() would refuse it, so every use of the pool would fail."""
    url = stack_env["DATABASE_URL"]
    pool = await make_driver_pool(
        f"{url}{'&' if '?' in url else '?'}prepared_statement_cache_size=0", max_size=1
    )
    try:
        async with pool.acquire() as connection:
            assert await connection.fetchval("SELECT 1") == 1
            assert connection._stmt_cache.get_max_size() == 0
    finally:
        await pool.close()
