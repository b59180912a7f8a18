"""A PostgreSQL outage that outlasts the redeliveries: tasks queued before it are processed after it.

The worker gets their messages while the database is away and can do nothing but put them back;
they must keep coming back for as long as the outage lasts, however long that is, and end done once
the database returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from config import get_settings
from devstack.stack import LocalServers
from tests import images
from tests.faults.burst import new_prefix
from tests.faults.outcome import assert_processed_once, wait_until_done, wait_until_settled
from tests.faults.processes import Started
from tests.waiting import eventually, final_row
from worker.__main__ import run


async def test_tasks_queued_before_a_postgres_outage_longer_than_their_redeliveries_end_done(
    client: httpx.AsyncClient,
    api_process: str,
    servers: LocalServers,
    stack_env: dict[str, str],
    workers: Callable[[str], Started],
    db: AsyncSession,
    processed_dir: Path,
) -> None:
    prefix = new_prefix("postgres-long-outage")
    task_ids = set()
    for number in range(3):
        posted = await client.post(
            "/upload", files={"file": (f"{prefix}-{number}.jpg", images.jpeg(160, 120), "image/jpeg")}
        )
        assert posted.status_code == 200, posted.text
        task_ids.add(posted.json()["task_id"])
    max_attempts = int(stack_env["MAX_ATTEMPTS"])
    try:
        await asyncio.to_thread(servers.postgres.stop)
        # The worker meets the queued tasks while the database is away; the outage lasts until it
        # has met one of them MAX_ATTEMPTS times, past any delivery limit tied to that setting. (It
        # pauses fetching while the database is down, so redeliveries of the first messages it took
        # come before the others: not every task need be met that often.)
        worker = workers("fault-postgres-outage-worker")
        tries: dict[int, int] = {}

        async def met_often_enough() -> bool:
            log = worker.log_file.read_text(errors="replace")
            for task_id in task_ids:
                tries[task_id] = len(re.findall(rf"task {task_id}: database unavailable", log))
            return max(tries.values()) >= max_attempts

        await eventually(
            met_often_enough,
            what=lambda: f"a task met {max_attempts} times without the database: {tries} {worker.log_tail()}",
        )
    finally:
        await asyncio.to_thread(servers.postgres.start)

    # With the database back, a few ACK_WAIT_SECONDS are ample for three small images.
    await wait_until_done(client, task_ids, timeout=3 * float(stack_env["ACK_WAIT_SECONDS"]))
    rows = await wait_until_settled(db, prefix, timeout=5)
    assert {row.id for row in rows} == task_ids
    assert_processed_once(rows, processed_dir)
    assert await worker.stop() == 0, worker.log_tail()


async def test_a_database_outage_longer_than_max_attempts_retries_delays_a_task_but_does_not_fail_it(
    client: httpx.AsyncClient, db: AsyncSession, servers: LocalServers, caplog: pytest.LogCaptureFixture
) -> None:
    """The same promise for a worker run in this process, which counts the attempts in the row."""
    settings = get_settings()
    posted = await client.post(
        "/upload", files={"file": ("photo.jpg", images.jpeg(), "application/octet-stream")}
    )
    assert posted.status_code == 200, posted.text
    task_id = posted.json()["task_id"]
    await db.close()
    caplog.set_level(logging.WARNING, logger="worker.consumer")

    servers.postgres.stop()
    stop = asyncio.Event()
    worker_task = asyncio.create_task(run(settings, stop))
    try:
        # The worker takes the message, cannot reach the database, and naks it with a delay, and the
        # outage lasts for more naks than MAX_ATTEMPTS (past any delivery limit tied to that setting).
        async def outlasted() -> bool:
            return caplog.text.count(f"task {task_id}: database unavailable") >= settings.max_attempts + 2

        await eventually(outlasted, what=f"task {task_id} put back more than MAX_ATTEMPTS times")
        servers.postgres.start()
        task = await final_row(db, task_id)
    finally:
        servers.postgres.start()
        stop.set()
        await asyncio.wait_for(worker_task, 30)

    assert task.status == "done", task.error
    assert task.attempts == 1, "attempts count only the runs that reached the database"
