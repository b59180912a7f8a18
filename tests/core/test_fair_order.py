"""The dispatcher's pick (core.tasks.next_waiting, core/fair_order.py) reads only the heads of the
waiting queues, and picks what ranking every waiting task would: checked against that ranking
written out in full here, on random backlogs in the migrated schema, and its plans checked to walk
the waiting index rather than the table."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core import fair_order, tasks
from core.models import Priority
from tests.database import session_on

KEYS = ("a" * 32, "b" * 32, "c" * 32, "d" * 32, "e" * 32, None)


@pytest.fixture
async def session(stack_env: dict[str, str]) -> AsyncIterator[AsyncSession]:
    """A transaction rolled back at the end: the rows it inserts are seen by nothing else."""
    async with session_on(stack_env["DATABASE_URL"]) as session:
        await session.begin()
        yield session
        await session.rollback()


async def _insert(session: AsyncSession, rows: Sequence[tuple[str | None, Priority]]) -> None:
    await session.execute(
        text("""
        INSERT INTO image_tasks (filename, content_type, size_bytes, width, height, sha256, input_name,
                                 owner, processing, priority)
        SELECT 'fair-order.jpg', 'image/jpeg', 1, 1, 1, repeat('0', 64),
               'fair-order-' || gen_random_uuid(), owner, '{}'::jsonb, priority
        FROM unnest(CAST(:owners AS text[]), CAST(:priorities AS text[])) AS r(owner, priority)"""),
        {"owners": [owner for owner, _ in rows], "priorities": [p.value for _, p in rows]},
    )


async def _ranked_in_full(
    session: AsyncSession, in_window: Mapping[str | None, int], limit: int
) -> dict[Priority, list[int]]:
    """The fair order by its definition: every waiting task scored, a key's t-th at n + t."""
    waiting = (
        await session.execute(
            text(
                "SELECT id, owner, priority FROM image_tasks"
                " WHERE queued_at IS NULL AND status = 'pending' ORDER BY id"
            )
        )
    ).all()
    ranked: dict[Priority, list[int]] = {}
    for priority in Priority:
        turns: dict[str | None, int] = {}
        scored = []
        for row in waiting:
            if row.priority == priority.value:
                turns[row.owner] = turns.get(row.owner, 0) + 1
                scored.append((in_window.get(row.owner, 0) + turns[row.owner], row.id))
        ranked[priority] = [task_id for _, task_id in sorted(scored)[:limit]]
    return ranked


@pytest.mark.parametrize("seed", range(6))
async def test_the_heads_give_the_order_that_ranking_every_waiting_task_gives(
    session: AsyncSession, seed: int
) -> None:
    chance = random.Random(seed)
    # Uneven keys: one with a long backlog, some with a handful, the key-less queue among them.
    weights = [chance.choice((1, 5, 40)) for _ in KEYS]
    rows = [
        (chance.choices(KEYS, weights)[0], chance.choice(list(Priority)))
        for _ in range(chance.randint(1, 400))
    ]
    await _insert(session, rows)
    in_window = {key: chance.choice((0, 0, 1, 3, 12)) for key in KEYS}

    for limit in (1, 2, 5, 33, 500):
        picked = await tasks.next_waiting(session, limit, in_window)
        expected = await _ranked_in_full(session, in_window, limit)
        assert {p: [row.id for row in found] for p, found in picked.items()} == expected, limit
        assert all(row.priority == p for p, found in picked.items() for row in found)


async def test_a_key_that_runs_out_of_tasks_hands_its_turns_to_the_others(session: AsyncSession) -> None:
    # Key a: 2 waiting, nothing in the window; key b: 20 waiting, 3 in the window. Ten places: a's two
    # first (scores 1, 2), then b's, from score 4 on, as many as are left.
    await _insert(session, [("a" * 32, Priority.NORMAL)] * 2 + [("b" * 32, Priority.NORMAL)] * 20)
    picked = (await tasks.next_waiting(session, 10, {"b" * 32: 3}))[Priority.NORMAL]
    owners = (
        await session.execute(
            text("SELECT id, owner FROM image_tasks WHERE id = ANY(:ids)"), {"ids": [r.id for r in picked]}
        )
    ).all()
    by_id = dict(owners)
    assert len(picked) == 10
    assert [by_id[row.id] for row in picked[:2]] == ["a" * 32] * 2
    assert {by_id[row.id] for row in picked[2:]} == {"b" * 32}


async def test_the_pick_walks_the_waiting_index_not_the_table(session: AsyncSession) -> None:
    """Plain equalities let the planner walk the unqueued ids (or the owners') and filter through
    every waiting task of the other keys; the row comparisons leave it the waiting index only."""
    await _insert(session, [("a" * 32, Priority.BULK)] * 3000 + [(None, Priority.BULK)] * 10)
    await session.execute(text("ANALYZE image_tasks"))
    plans = [
        "\n".join(row[0] for row in await session.execute(text(f"EXPLAIN {statement.text}"), params))
        for young in (0, 6)  # with a window; without one, where new tasks are their requests'
        for statement, params in (
            (tasks._WAITING_KEYS, {"young": young}),
            (
                tasks._QUEUE_HEADS,
                {
                    "priorities": ["bulk", "bulk"],
                    "owners": ["a" * 32, ""],
                    "after": [0, 0],
                    "take": [5, 5],
                    "young": young,
                },
            ),
        )
    ]
    for plan in plans:
        assert "ix_image_tasks_waiting_heads" in plan, plan
        for other in ("Seq Scan", "ix_image_tasks_unqueued", "ix_image_tasks_owner", "image_tasks_pkey"):
            assert other not in plan, plan


def test_the_least_score_counts_what_an_exhausted_key_has() -> None:
    many = fair_order.KeyQueue[tasks.Unqueued]("a", in_window=0)
    few = fair_order.KeyQueue[tasks.Unqueued]("b", 0, [tasks.Unqueued(1, 0)], exhausted=True)
    # Scores 1 and 2 of `many`, 1 of `few`: three tasks score at most 2.
    assert fair_order.least_score([many, few], 3) == 2
    assert fair_order.least_score([few], 2) is None
    assert fair_order.to_read([many, few], 3) == [(many, 2)]


async def test_a_pass_without_a_window_leaves_new_tasks_to_the_requests_publishing_them(
    session: AsyncSession,
) -> None:
    """api/dispatcher.py `queue_new`: a new task (no attempt, retry or reprocessing yet) committed
    less than `young_seconds` ago is its request's to publish; anything else waiting is the pass's."""
    await _insert(session, [(None, Priority.NORMAL)] * 2)
    newest = "SELECT id FROM image_tasks WHERE filename = 'fair-order.jpg' ORDER BY id DESC LIMIT 2"
    retried, new = [row.id for row in (await session.execute(text(newest))).all()]
    await session.execute(text("UPDATE image_tasks SET retries = 1 WHERE id = :id"), {"id": retried})

    async def picked(young_seconds: float) -> set[int]:
        waiting = await tasks.next_waiting(session, 10_000, young_seconds=young_seconds)
        return {task.id for task in waiting[Priority.NORMAL]}

    assert {retried, new} <= await picked(0)
    by_a_pass = await picked(6)
    assert retried in by_a_pass and new not in by_a_pass
    await session.execute(
        text("UPDATE image_tasks SET upload_time = now() - interval '7 seconds' WHERE id = :id"), {"id": new}
    )
    assert new in await picked(6)
