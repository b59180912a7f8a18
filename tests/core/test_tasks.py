"""core.tasks' hot statements (hand-written SQL on the driver pool) against the migrated schema, and
the driver errors it maps to our own exceptions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from core import tasks
from core.db import (
    CouldNotConnect,
    closed_under_us,
    is_database_unavailable,
    make_driver_pool,
    released_under_us,
)
from core.storage import Folders, LocalStorage, new_stored_name
from devstack.servers import free_port
from tests.waiting import eventually

_TEST_ROW = "task-statement-"
_LEASE = timedelta(minutes=5)
_UNUSED_STORAGE = LocalStorage(Folders(Path("/nonexistent/uploads"), Path("/nonexistent/processed")))


@pytest.fixture
async def database(stack_env: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    """The shared test database; the rows these tests make (not real tasks) are deleted after each."""
    pool = await make_driver_pool(stack_env["DATABASE_URL"], max_size=2)
    yield pool
    await pool.execute(f"DELETE FROM image_tasks WHERE filename LIKE '{_TEST_ROW}%'")
    await pool.close()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    """A local file store of its own, to see which uploads a failed insert removes."""
    folders = Folders(tmp_path / "uploads", tmp_path / "processed")
    folders.ensure_dirs()
    return LocalStorage(folders)


def _kept_upload(storage: LocalStorage, **columns: object) -> tasks.NewTask:
    """A new task whose upload file is stored, as the upload route keeps it before the insert."""
    new_task = _new_task(**columns)
    (storage.folders.uploads_dir / new_task.input_name).write_bytes(b"an image")
    return new_task


def _stored(storage: LocalStorage, new_task: tasks.NewTask) -> bool:
    return (storage.folders.uploads_dir / new_task.input_name).exists()


def _new_task(**columns: object) -> tasks.NewTask:
    values: dict[str, object] = {
        "filename": f"{_TEST_ROW}a.jpg",
        "content_type": "image/jpeg",
        "size_bytes": 1,
        "width": 1,
        "height": 1,
        "sha256": "0" * 64,
        "input_name": new_stored_name(".jpg"),
        "idempotency_key": None,
        "owner": None,
        "callback_url": None,
        "processing": {"outputs": []},
        **columns,
    }
    return tasks.NewTask(**values)  # type: ignore[arg-type]


async def _insert(pool: asyncpg.Pool, **columns: object) -> int:
    # No file: a successful insert never touches the store.
    return await tasks.insert_task(pool, _UNUSED_STORAGE, _new_task(**columns))


async def _row(pool: asyncpg.Pool, task_id: int) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM image_tasks WHERE id = $1", task_id)


async def test_an_insert_takes_the_columns_defaults(database: asyncpg.Pool) -> None:
    task_id = await _insert(database)
    row = await _row(database, task_id)

    assert (row["status"], row["attempts"], row["callback_attempts"]) == ("pending", 0, 0)
    assert row["upload_time"] is not None and row["queued_at"] is None


async def test_a_claim_leases_counts_and_excludes_a_second_claim(database: asyncpg.Pool) -> None:
    task_id = await _insert(database, processing={"outputs": [{"name": "default"}]})

    claim = await tasks.claim(database, task_id, _LEASE)
    again = await tasks.claim(database, task_id, _LEASE)

    assert claim is not None and claim.attempts == 1
    assert claim.processing == {"outputs": [{"name": "default"}]}
    assert again is None, "a live lease is the lock"
    assert await tasks.status_of(database, task_id) == "processing"
    assert await tasks.renew_lease(database, task_id, _LEASE, claim.started_at)
    row = await _row(database, task_id)
    assert row["leased_until"] > row["started_at"] + timedelta(minutes=4)


async def test_a_processing_row_whose_lease_ran_out_is_claimable(database: asyncpg.Pool) -> None:
    task_id = await _insert(database)
    first = await tasks.claim(database, task_id, -_LEASE)

    claim = await tasks.claim(database, task_id, _LEASE)

    assert claim is not None and claim.attempts == 2
    assert first is not None
    assert not await tasks.renew_lease(database, task_id, _LEASE, first.started_at), "no longer its claim"
    assert not await tasks.finish_done(database, task_id, [{"file": "x.jpg"}], first.started_at)
    assert await tasks.renew_lease(database, task_id, _LEASE, claim.started_at)


async def test_a_stale_claim_can_neither_fail_nor_hand_back_a_task_claimed_again(
    database: asyncpg.Pool,
) -> None:
    """The first worker's lease ran out and a second worker claimed the task: the first one's
    failure (or hand-back) must not touch the second one's run, exactly as its `done` would not."""
    task_id = await _insert(database)
    stale = await tasks.claim(database, task_id, -_LEASE)
    live = await tasks.claim(database, task_id, _LEASE)
    assert stale is not None and live is not None

    assert not await tasks.finish_failed(database, task_id, "stale failure", stale.started_at)
    await tasks.release(database, task_id, stale.started_at)
    await tasks.give_back(database, task_id, stale.started_at)

    row = await _row(database, task_id)
    assert (row["status"], row["error"], row["attempts"]) == ("processing", None, 2)
    assert row["started_at"] == live.started_at and row["leased_until"] is not None
    assert await tasks.renew_lease(database, task_id, _LEASE, live.started_at), "still the live claim's"
    assert await tasks.finish_failed(database, task_id, "live failure", live.started_at)
    row = await _row(database, task_id)
    assert (row["status"], row["error"]) == ("failed", "live failure")


async def test_a_claim_fails_its_task_after_the_lease_sweep_put_it_back_but_not_after_a_retry(
    database: asyncpg.Pool,
) -> None:
    """As for `done`: a task the sweep re-queued (still that claim's: not claimed since) may be
    failed by it; one retried since (started_at cleared) may not."""
    task_id = await _insert(database)
    claim = await tasks.claim(database, task_id, _LEASE)
    assert claim is not None
    await database.execute(
        "UPDATE image_tasks SET status = 'pending', leased_until = NULL WHERE id = $1", task_id
    )
    assert await tasks.finish_failed(database, task_id, "failed after the sweep", claim.started_at)

    await database.execute(
        "UPDATE image_tasks SET status = 'pending', started_at = NULL, finished_at = NULL WHERE id = $1",
        task_id,
    )
    assert not await tasks.finish_failed(database, task_id, "stale", claim.started_at)
    assert (await _row(database, task_id))["status"] == "pending"


async def test_release_counts_the_attempt_and_give_back_does_not(database: asyncpg.Pool) -> None:
    task_id = await _insert(database)
    first = await tasks.claim(database, task_id, _LEASE)
    assert first is not None
    await tasks.release(database, task_id, first.started_at)
    released = await _row(database, task_id)
    second = await tasks.claim(database, task_id, _LEASE)
    assert second is not None
    await tasks.give_back(database, task_id, second.started_at)
    given_back = await _row(database, task_id)

    assert (released["status"], released["attempts"], released["leased_until"]) == ("pending", 1, None)
    assert (given_back["status"], given_back["attempts"], given_back["leased_until"]) == ("pending", 1, None)


async def test_finishing_makes_a_callback_due_only_where_the_row_has_one(database: asyncpg.Pool) -> None:
    with_callback = await _insert(database, callback_url="https://example.org/hook")
    without = await _insert(database)
    outputs = [{"file": "x.jpg", "name": "default"}]
    claims = [await tasks.claim(database, task_id, _LEASE) for task_id in (with_callback, without)]
    started_at = claims[0].started_at if claims[0] else None
    assert started_at is not None

    assert await tasks.finish_done(database, with_callback, outputs, started_at)
    assert claims[1] is not None
    assert await tasks.finish_failed(database, without, "broken", claims[1].started_at)
    done, failed = await _row(database, with_callback), await _row(database, without)

    assert (done["status"], done["output_name"], done["leased_until"]) == ("done", "x.jpg", None)
    assert done["outputs"] is not None and done["finished_at"] is not None
    assert (done["callback_state"], failed["callback_state"]) == ("pending", None)
    assert done["callback_next_at"] is not None and failed["callback_next_at"] is None
    assert (failed["status"], failed["error"]) == ("failed", "broken")
    assert not await tasks.finish_done(database, with_callback, outputs, started_at), (
        "a final row stays as it is"
    )
    assert not await tasks.finish_failed(database, with_callback, "late", started_at)
    assert (await _row(database, with_callback))["status"] == "done"


async def test_status_of_a_missing_row_is_none(database: asyncpg.Pool) -> None:
    assert await tasks.status_of(database, 2**31 - 1) is None


async def test_a_second_row_for_one_idempotency_key_is_a_conflict(
    database: asyncpg.Pool, storage: LocalStorage
) -> None:
    key = f"{_TEST_ROW}{uuid.uuid4().hex}"
    first = _kept_upload(storage, idempotency_key=key)
    await tasks.insert_task(database, storage, first)
    second = _kept_upload(storage, idempotency_key=key)

    with pytest.raises(tasks.TaskConflict):
        await tasks.insert_task(database, storage, second)

    assert _stored(storage, first)
    assert not _stored(storage, second), "the server refused it: its upload goes"


def test_driver_errors_are_told_apart_from_an_unavailable_database() -> None:
    assert not is_database_unavailable(asyncpg.UniqueViolationError("duplicate key"))
    assert is_database_unavailable(asyncpg.AdminShutdownError("terminating connection"))
    assert is_database_unavailable(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert is_database_unavailable(asyncpg.InterfaceError("connection is closed"))
    assert is_database_unavailable(asyncpg.InterfaceError("pool is closing"))
    assert is_database_unavailable(asyncpg.InterfaceError("cannot perform operation: connection is closed"))
    # The server ended a pooled connection: asyncpg read its FATAL message but not yet the end of the
    # stream, or the pool took the connection back between its checkout and its statement.
    assert is_database_unavailable(
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        )
    )
    assert not is_database_unavailable(
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    )


async def test_a_connection_used_after_its_release_is_a_bug_not_an_outage(database: asyncpg.Pool) -> None:
    """Outside core.tasks' own `async with pool.acquire()`, a proxy refused as released back to the
    pool was used after its release by our code: a bug (500, logged), never "unavailable" (503)."""
    async with database.acquire() as connection:
        pass
    with pytest.raises(asyncpg.InterfaceError) as raised:
        await connection.fetchval("SELECT 1")

    assert released_under_us(raised.value), repr(raised.value)
    assert not is_database_unavailable(raised.value)
    assert not closed_under_us(raised.value)


async def _terminated_and_gone(dsn: str, pid: int, before: str = "") -> None:
    other = await asyncpg.connect(dsn)
    try:
        if before:
            await other.execute(before)
        await other.execute("SELECT pg_terminate_backend($1)", pid)

        async def gone() -> bool:
            return not await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)

        await eventually(gone, timeout=10, what=f"backend {pid} still running after its termination")
    finally:
        await other.close()


async def _insert_on_a_connection_terminated_after_checkout(
    stack_env: dict[str, str],
    pool: asyncpg.Pool,
    new_task: tasks.NewTask,
    storage: LocalStorage,
    *,
    before: str = "",
) -> int:
    """Insert `new_task` on `pool` (max_size=1) whose only connection PostgreSQL terminates after
    the pool handed it to the insert, before the INSERT is sent: what a restart does to idle pooled
    connections. `before` runs (as the test's superuser) just before the termination."""
    dsn = stack_env["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    async with pool.acquire() as held:
        pid = await held.fetchval("SELECT pg_backend_pid()")
        # The insert waits for the pool's only connection, held here.
        inserting = asyncio.create_task(tasks.insert_task(pool, storage, new_task))
        for _ in range(3):  # yields, not a wait: the insert's acquire reaches the pool's queue
            await asyncio.sleep(0)
        # Terminated and gone while this event loop is held on purpose: handing the connection
        # over still finds it open, and asyncpg reads the server's goodbye only after that.
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, _terminated_and_gone(dsn, pid, before)).result()
    return await inserting


async def test_an_insert_refused_unsent_on_a_terminated_connection_is_tried_once_more(
    stack_env: dict[str, str], database: asyncpg.Pool, storage: LocalStorage
) -> None:
    """A PostgreSQL restart terminates the pool's sessions. One whose end asyncpg reads after the
    pool handed it out, before the INSERT was sent, refuses the statement unsent: nothing was made,
    so it is tried once more on a new connection, and the upload is made, not answered 503."""
    pool = await make_driver_pool(stack_env["DATABASE_URL"], max_size=1)
    new_task = _kept_upload(storage)
    try:
        task_id = await _insert_on_a_connection_terminated_after_checkout(stack_env, pool, new_task, storage)
    finally:
        await pool.close()

    row = await _row(database, task_id)
    assert (row["status"], row["input_name"]) == ("pending", new_task.input_name)
    assert _stored(storage, new_task), "its row was made: its upload stays"


async def test_an_insert_refused_unsent_twice_is_unavailable(
    stack_env: dict[str, str], database: asyncpg.Pool, storage: LocalStorage
) -> None:
    """The second try finds the database still refusing (here: the pool's role may no longer log
    in, as a server going down refuses connections): the database is unavailable (503), not a bug
    (500), and no row was made, so the upload goes. One more try, not a loop."""
    role = f"iq_retry_{uuid.uuid4().hex[:12]}"
    url = make_url(stack_env["DATABASE_URL"])
    await database.execute(f'CREATE ROLE "{role}" LOGIN')
    await database.execute(f'GRANT INSERT, SELECT ON image_tasks TO "{role}"')
    await database.execute(f'GRANT USAGE ON SEQUENCE image_tasks_id_seq TO "{role}"')
    pool = await make_driver_pool(
        url.set(username=role, password=None).render_as_string(hide_password=False), max_size=1
    )
    new_task = _kept_upload(storage)
    try:
        with pytest.raises(tasks.DatabaseUnavailable) as raised:
            await _insert_on_a_connection_terminated_after_checkout(
                stack_env, pool, new_task, storage, before=f'ALTER ROLE "{role}" NOLOGIN'
            )
        assert isinstance(raised.value.__cause__, CouldNotConnect), repr(raised.value.__cause__)
    finally:
        await pool.close()
        await database.execute(f'REVOKE ALL ON image_tasks FROM "{role}"')
        await database.execute(f'REVOKE ALL ON SEQUENCE image_tasks_id_seq FROM "{role}"')
        await database.execute(f'DROP ROLE "{role}"')

    assert not _stored(storage, new_task), "the statement never left: its upload goes"


async def test_a_driver_error_that_is_a_bug_passes_through_as_it_is(database: asyncpg.Pool) -> None:
    """An argument of the wrong type is a bug: never "unavailable" (a 503, or a worker nak'ing for
    ever), and raised as the driver raised it, not wrapped and not stripped of its cause."""
    with pytest.raises(asyncpg.DataError, match="invalid input for query argument") as raised:
        await tasks.status_of(database, "not an id")  # type: ignore[arg-type]
    assert isinstance(raised.value.__cause__, TypeError), "its own cause, as the driver raised it"


async def test_a_pool_on_an_unreachable_server_starts_and_each_use_is_unavailable(
    storage: LocalStorage,
) -> None:
    pool = await make_driver_pool(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none", max_size=1)
    new_task = _kept_upload(storage)
    try:
        with pytest.raises(tasks.DatabaseUnavailable):
            await tasks.status_of(pool, 1)
        with pytest.raises(tasks.DatabaseUnavailable):
            await tasks.insert_task(pool, storage, new_task)
    finally:
        await pool.close()

    assert not _stored(storage, new_task), "the statement never left: its upload goes"


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
