"""NATS restarted (its file store kept) during a burst: uploads keep being accepted, the outbox relay
queues what was committed while NATS was away, and the worker and API reconnect by themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from devstack.stack import LocalServers
from tests.faults.burst import Burst, new_prefix
from tests.faults.outcome import assert_processed_once, rows_named, wait_until_done, wait_until_settled
from tests.faults.processes import Started, worker_ready


async def test_uploads_accepted_across_a_nats_restart_are_all_processed_once(
    client: httpx.AsyncClient,
    api_process: str,
    servers: LocalServers,
    workers: Callable[[str], Started],
    db: AsyncSession,
    processed_dir: Path,
) -> None:
    prefix = new_prefix("nats-restart")
    worker = workers("fault-nats-worker")
    await worker_ready(worker)
    nats_down = False
    try:
        async with Burst(api_process, prefix) as burst:
            await burst.wait_for_more(10)
            nats_down = True
            await asyncio.to_thread(servers.nats.stop)
            await burst.wait_for_more(10)
            # Read while NATS is still down: nothing can have marked these rows queued.
            waiting_for_relay = [row for row in await rows_named(db, prefix) if row.queued_at is None]
            await asyncio.to_thread(servers.nats.start)
            nats_down = False
            await burst.wait_for_more(10)
    finally:
        if nats_down:
            servers.nats.start()

    assert burst.unexpected(allowed_statuses={200}) == []
    assert waiting_for_relay, "no upload was accepted while NATS was down"
    await wait_until_done(client, burst.accepted, timeout=40)
    rows = await wait_until_settled(db, prefix, timeout=5)
    assert {row.id for row in rows} == burst.accepted
    assert_processed_once(rows, processed_dir)
    assert await worker.stop() == 0, worker.log_tail()
