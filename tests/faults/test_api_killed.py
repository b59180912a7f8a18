"""An API process SIGKILLed in the middle of a burst, then started again on the same port: requests
cut off are connection errors (never a 500), and every row committed, answered or not, reaches the
queue through an outbox relay and is processed once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from devstack.servers import free_port
from devstack.stack import LocalServers
from tests.faults.burst import Burst, new_prefix
from tests.faults.link import Link
from tests.faults.outcome import assert_processed_once, rows_named, wait_until_done, wait_until_settled
from tests.faults.processes import Started, api_ready, stop_api, worker_ready
from tests.waiting import eventually


async def test_an_api_killed_mid_burst_and_restarted_loses_no_task_it_committed(
    servers: LocalServers,
    apis: Callable[..., Started],
    workers: Callable[[str], Started],
    db: AsyncSession,
    processed_dir: Path,
) -> None:
    prefix = new_prefix("api-kill")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    worker = workers("fault-api-kill-worker")

    async with Link(servers.nats.port) as link:
        api = apis("fault-api-killed", port, NATS_URL=link.url)
        await api_ready(api, base_url)
        await worker_ready(worker)
        async with Burst(base_url, prefix) as burst:
            await burst.wait_for_more(10)
            # Between a request's commit and its publish there is a millisecond. With the link cut,
            # requests that committed wait there for an answer from NATS that cannot come (their
            # publish is lost), so the kill lands on committed rows that nothing has published.
            link.cut()

            async def publishes_waiting() -> bool:
                return len([row for row in await rows_named(db, prefix) if row.queued_at is None]) >= 3

            await eventually(
                publishes_waiting, timeout=5, what="three committed rows that the cut link left unpublished"
            )
            await api.kill()
            await burst.wait_for_errors(3)
            restarted = apis("fault-api-restarted", port)
            await api_ready(restarted, base_url)
            await burst.wait_for_more(10)

    assert burst.unexpected(allowed_statuses={200}, connection_errors=True) == []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await wait_until_done(client, burst.accepted, timeout=30)
    rows = await wait_until_settled(db, prefix, timeout=10)
    assert burst.accepted <= {row.id for row in rows}
    cut_off = [row for row in rows if row.id not in burst.accepted]
    assert cut_off, "no request was cut off after committing its row"
    assert [row for row in rows if row.status != "done"] == []
    assert_processed_once(rows, processed_dir)
    await stop_api(restarted)
    assert await worker.stop() == 0, worker.log_tail()
