"""Clearing the work an earlier test module left on the session's stack, before the next one runs.

A test process shares one PostgreSQL and NATS among its modules. Many modules queue tasks that no
worker of theirs takes (or stop their worker mid-way), and under pytest-xdist any module may follow
any other: the next module's worker then spends its time on a dozen leftover tasks, and counts,
queue depths and "nobody took them" checks see work that is not theirs. So before each module that
uses the stack, what is still waiting is ended the way an operator would end it:

- tasks `pending` or `processing` become `cancelled` (no callback falls due: their receivers are
  gone with their module), so the API's dispatcher no longer queues them;
- bulk reprocess jobs still running or paused are cancelled, so they step no further;
- the task stream is purged, which also drops what the consumer had handed out and not seen acked.

Rows stay (tests may list or count them as history); only waiting work goes.
"""

from __future__ import annotations

import nats
from nats.js.errors import NotFoundError
from sqlalchemy import text

from core.queue import STREAM
from tests.database import session_on

_END_TASKS = text(
    "UPDATE image_tasks SET status = 'cancelled', error = NULL, finished_at = now(), leased_until = NULL"
    " WHERE status IN ('pending', 'processing')"
)
_END_JOBS = text(
    "UPDATE reprocess_jobs SET state = 'cancelled', finished_at = now() WHERE state IN ('running', 'paused')"
)


async def clear_waiting_work(database_url: str, nats_url: str) -> None:
    async with session_on(database_url) as session:
        await session.execute(_END_TASKS)
        await session.execute(_END_JOBS)
        await session.commit()
    connection = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        await connection.jetstream().purge_stream(STREAM)
    except NotFoundError:
        pass  # not made yet (no API or worker has started): nothing queued
    finally:
        await connection.close()
