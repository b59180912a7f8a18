"""Per-key limits decided in PostgreSQL (core.key_limits): the GCRA cell's arithmetic, the pending
count, and that many concurrent callers share one limit exactly."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from core import key_limits
from core.api_keys import KeyPolicy, fingerprint
from core.db import DriverPool, make_driver_pool
from core.key_limits import Refusal, _Cell
from core.tasks import DatabaseUnavailable
from devstack.servers import free_port


@pytest.fixture
async def pool(stack_env: dict[str, str]) -> AsyncIterator[DriverPool]:
    pool = await make_driver_pool(stack_env["DATABASE_URL"], max_size=8)
    try:
        yield pool
    finally:
        await pool.execute(f"DELETE FROM image_tasks WHERE filename = '{_ROWS}'")
        await pool.close()


# The made-up tasks' file name, so that they are deleted after each test.
_ROWS = "key-limits-test.jpg"


def new_key(**limits: int) -> KeyPolicy:
    return KeyPolicy(f"limits-{secrets.token_hex(8)}", **limits)


async def add_tasks(pool: DriverPool, owner: str, statuses: list[str]) -> None:
    for status in statuses:
        await pool.execute(
            "INSERT INTO image_tasks (filename, status, content_type, size_bytes, width, height, sha256, "
            "input_name, owner, processing) VALUES ($4, $1, 'image/jpeg', 1, 1, 1, '', $2, $3, '{}')",
            status,
            secrets.token_hex(16),
            owner,
            _ROWS,
        )


def test_a_rate_that_does_not_divide_the_minute_keeps_its_whole_burst() -> None:
    # 60 s / 7 is not a whole number of microseconds: the window is 7 rounded intervals.
    cell = _Cell(7)
    assert cell.window == 7 * cell.interval
    # The first of a burst: 6 left, and the 7th... accrues no sooner than an interval from now.
    assert cell.state(True, timedelta(microseconds=cell.interval)) == (6, 8, None)
    # The last of the burst, then the first refused: 0 left and the wait to the next one.
    assert cell.state(True, timedelta(microseconds=cell.window)) == (0, 8, None)
    refused = cell.state(False, timedelta(microseconds=cell.window))
    assert refused[:2] == (0, 8) and refused[2] == pytest.approx(cell.interval / 1e6)


async def test_a_burst_of_the_whole_quota_is_admitted_then_one_each_interval(pool: DriverPool) -> None:
    key = new_key(uploads_per_minute=7)

    verdicts = [await key_limits.admit(pool, key) for _ in range(8)]

    assert [verdict.refusal for verdict in verdicts if verdict] == [None] * 7 + [Refusal.RATE]
    assert [verdict.rate_remaining for verdict in verdicts if verdict] == [6, 5, 4, 3, 2, 1, 0, 0]
    refused = verdicts[-1]
    assert refused is not None and refused.rate_wait is not None
    # 60/7 s after the first of the burst, less the few milliseconds the burst took.
    assert 8.0 < refused.rate_wait <= 60 / 7


async def test_concurrent_callers_share_one_limit_exactly(pool: DriverPool) -> None:
    key = new_key(uploads_per_minute=20)

    verdicts = await asyncio.gather(*(key_limits.admit(pool, key) for _ in range(50)))

    assert sum(1 for verdict in verdicts if verdict and verdict.admitted) == 20


async def test_max_pending_counts_only_the_keys_unfinished_tasks(pool: DriverPool) -> None:
    key = new_key(max_pending=3)
    owner = fingerprint(key.key)
    await add_tasks(pool, owner, ["pending", "processing", "done", "failed"])
    await add_tasks(pool, fingerprint("someone-else-0123456789"), ["pending"] * 5)

    admitted = await key_limits.admit(pool, key)
    assert admitted is not None and admitted.admitted and admitted.pending_remaining == 0

    await add_tasks(pool, owner, ["pending"])
    refused = await key_limits.admit(pool, key)
    assert refused is not None and refused.refusal is Refusal.PENDING
    assert (refused.quota_policies(), refused.service_limits()) == (
        '"pending";q=3;qu="concurrent-requests"',
        '"pending";r=0',
    )


async def test_a_pending_refusal_does_not_use_the_rate(pool: DriverPool) -> None:
    key = new_key(uploads_per_minute=60, max_pending=1)
    await add_tasks(pool, fingerprint(key.key), ["pending"])

    first = await key_limits.admit(pool, key)
    second = await key_limits.admit(pool, key)

    for verdict in (first, second):
        assert verdict is not None and verdict.refusal is Refusal.PENDING
        assert verdict.rate_remaining == 60, "nothing was taken from the minute's quota"
    row = await pool.fetchrow(
        "SELECT tat <= now() AS idle FROM api_key_rates WHERE owner = $1", fingerprint(key.key)
    )
    assert row is not None and row["idle"]


async def test_keys_without_limits_ask_nothing_and_a_limit_of_zero_refuses_at_once(pool: DriverPool) -> None:
    assert await key_limits.admit(pool, KeyPolicy("no-limits-0123456789", priority="bulk")) is None

    for key in (new_key(uploads_per_minute=0), new_key(max_pending=0, uploads_per_minute=5)):
        verdict = await key_limits.admit(pool, key)
        assert verdict is not None and verdict.refusal is Refusal.FORBIDDEN
    count = await pool.fetchval("SELECT count(*) FROM api_key_rates WHERE owner = $1", fingerprint(key.key))
    assert count == 0


async def test_a_rate_refusal_leaves_the_pending_quota_whole(pool: DriverPool) -> None:
    key = new_key(uploads_per_minute=1, max_pending=5)

    admitted = await key_limits.admit(pool, key)
    refused = await key_limits.admit(pool, key)

    # admit() only counts: no task was made, so both see none unfinished.
    assert admitted is not None and admitted.admitted and admitted.pending_remaining == 4
    assert refused is not None and refused.refusal is Refusal.RATE and refused.pending_remaining == 5
    assert refused.service_limits() == f'"minute";r=0;t={refused.rate_window}, "pending";r=5'


async def test_a_database_that_cannot_be_reached_is_database_unavailable() -> None:
    pool = await make_driver_pool(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none", max_size=1)
    try:
        with pytest.raises(DatabaseUnavailable):
            await key_limits.admit(pool, new_key(uploads_per_minute=5))
    finally:
        await pool.close()
