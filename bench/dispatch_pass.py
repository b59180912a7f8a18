"""What one dispatcher pass's pick costs PostgreSQL, by backlog and by number of keys.

    .venv/bin/python -m bench.dispatch_pass [--passes 200] [--explain]

On a throwaway PostgreSQL (migrated by Alembic), for each scenario: N waiting tasks spread over K
keys (and priorities), plus a full window's worth published and not final (32, as DISPATCH_WINDOW
would hold). It times core.tasks.next_waiting as the dispatcher calls it (the window counted, then
2 picked: one place freed, plus one to learn whether more wait) and, for comparison, the single
statement it replaced (`_RANK_EVERY_WAITING` below: window functions over every waiting row).
Figures: the PostgreSQL backend's own CPU time per pick (/proc of its process, so other load on
the machine does not count) and the wall time. `--explain` also prints EXPLAIN (ANALYZE, BUFFERS)
of each statement of one pick.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core import tasks
from core.db import make_engine, make_sessionmaker
from devstack.servers import LocalPostgres
from devstack.stack import migrate

WINDOW = 32

# What core.tasks.next_waiting ran before it read only the queues' heads (kept here to compare).
_RANK_EVERY_WAITING = text("""\
WITH in_window AS (
    SELECT owner, count(*) AS n FROM image_tasks
    WHERE queued_at IS NOT NULL AND status IN ('pending', 'processing') GROUP BY owner
), waiting AS (
    SELECT id, owner, priority, attempts, retries, traceparent,
           COALESCE((processing->>'generation')::int, 0) AS generation,
           row_number() OVER (PARTITION BY priority, owner ORDER BY id) AS turn
    FROM image_tasks WHERE queued_at IS NULL AND status = 'pending'
), ranked AS (
    SELECT waiting.id, waiting.priority, waiting.attempts, waiting.retries, waiting.traceparent,
           waiting.generation,
           row_number() OVER (
               PARTITION BY waiting.priority ORDER BY COALESCE(in_window.n, 0) + waiting.turn, waiting.id
           ) AS place
    FROM waiting LEFT JOIN in_window ON in_window.owner IS NOT DISTINCT FROM waiting.owner
)
SELECT id, priority, attempts, retries, traceparent, generation FROM ranked
WHERE place <= :limit ORDER BY place""")


@dataclass(frozen=True)
class Scenario:
    waiting: int
    keys: int
    # Spread over the three priorities, or all `normal`.
    priorities: bool = False

    def __str__(self) -> str:
        spread = "3 priorities" if self.priorities else "1 priority"
        return f"{self.waiting:,} waiting, {self.keys:,} keys, {spread}"


SCENARIOS = (
    Scenario(10_000, 3),
    Scenario(10_000, 3, priorities=True),
    Scenario(10_000, 1_000),
    Scenario(100_000, 3),
    Scenario(100_000, 1_000, priorities=True),
)


async def fill(engine: AsyncEngine, session: AsyncSession, scenario: Scenario) -> None:
    await session.execute(text("TRUNCATE image_tasks RESTART IDENTITY CASCADE"))
    priority = "(ARRAY['interactive', 'normal', 'bulk'])[1 + n % 3]" if scenario.priorities else "'normal'"
    # One key's tasks are not all together (uploads interleave): key = n % keys.
    await session.execute(
        text(f"""
        INSERT INTO image_tasks (filename, content_type, size_bytes, width, height, sha256, input_name,
                                 owner, processing, priority, queued_at, status)
        SELECT 'bench.jpg', 'image/jpeg', 1000, 64, 48, repeat('0', 64), 'in-' || n,
               'key-' || (n % :keys), '{{}}'::jsonb, {priority},
               CASE WHEN n <= :window THEN now() END,
               CASE WHEN n <= :window / 2 THEN 'processing' ELSE 'pending' END
        FROM generate_series(1, :total) AS n"""),
        {"keys": scenario.keys, "window": WINDOW, "total": scenario.waiting + WINDOW},
    )
    await session.commit()
    # As autovacuum would have left a table filled over minutes: statistics, a visibility map.
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text("VACUUM ANALYZE image_tasks"))


async def backend_cpu(session: AsyncSession) -> float:
    """The CPU seconds this session's PostgreSQL backend has used."""
    return process_cpu((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pick(session: AsyncSession) -> int:
    in_window = await tasks.count_in_window(session, WINDOW)
    free = max(1, WINDOW - in_window.total)
    found = await tasks.next_waiting(session, free + 1, in_window.by_owner)
    return sum(len(rows) for rows in found.values())


async def rank_every_waiting(session: AsyncSession) -> int:
    return len((await session.execute(_RANK_EVERY_WAITING, {"limit": 2})).all())


async def measure(session: AsyncSession, passes: int, once: Any) -> tuple[float, float]:
    """(backend CPU ms, wall ms) per call of `once`."""
    await once(session)  # plans cached, pages in memory
    await session.rollback()
    cpu = await backend_cpu(session)
    started = time.perf_counter()
    for _ in range(passes):
        await once(session)
        await session.rollback()
    wall = time.perf_counter() - started
    cpu = await backend_cpu(session) - cpu
    return cpu / passes * 1000, wall / passes * 1000


class Explaining:
    """A session stand-in that prints EXPLAIN (ANALYZE, BUFFERS) of each statement it runs."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def execute(self, statement: Any, params: Any = None) -> Any:
        plan = await self._session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {statement.text}"), params)
        print(f"\n{statement.text}\n{params or ''}")
        print("\n".join(f"    {row[0]}" for row in plan))
        return await self._session.execute(statement, params)


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-dispatch-pass-"))
    postgres = LocalPostgres(workdir / "postgres")
    try:
        await asyncio.to_thread(postgres.start)
        await asyncio.to_thread(migrate, postgres.url())
        engine = make_engine(postgres.url(), pool_size=2)
        async with make_sessionmaker(engine)() as session:
            print(f"load average {os.getloadavg()[0]:.1f}; {args.passes} picks each\n")
            print("| scenario | heads: PG CPU ms / pick | wall ms | rank all: PG CPU ms / pick | wall ms |")
            print("|---|---|---|---|---|")
            for scenario in SCENARIOS:
                await fill(engine, session, scenario)
                assert await pick(session) >= 2
                await session.rollback()
                heads = await measure(session, args.passes, pick)
                every = await measure(session, max(5, args.passes // 20), rank_every_waiting)
                print(
                    f"| {scenario} | {heads[0]:.2f} | {heads[1]:.2f} | {every[0]:.1f} | {every[1]:.1f} |",
                    flush=True,
                )
                if args.explain:
                    await pick(Explaining(session))  # type: ignore[arg-type]
                    await session.rollback()
            print(f"\nload average {os.getloadavg()[0]:.1f}")
        await engine.dispose()
    finally:
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) one pick")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
