"""The fair order between keys' waiting tasks, worked out from the heads of their queues only.

Within one priority, a key's t-th waiting task (oldest first) scores n + t, n being that key's tasks
already in the window (published, not final); the lower score goes first, the older task on a tie.
So keys take turns, and a key with many tasks in the window waits for the others (api/dispatcher.py).

Ranking every waiting task to find the first `limit` (one window function over them all) cost
PostgreSQL ~50 ms of CPU per image with thousands waiting. Only a head can rank that high: if s is
the least score with `limit` tasks scoring at most s, no task scoring more can be among the first
`limit`, so each key's queue is read only up to s - n tasks, `limit` + keys in all, whatever the
backlog. How many tasks each key has is not counted (that is the backlog again): a key is taken to
have as many as asked until a read returns fewer, then s is worked out again with what it has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


class Identified(Protocol):
    @property
    def id(self) -> int: ...


_Row = TypeVar("_Row", bound=Identified)


@dataclass
class KeyQueue(Generic[_Row]):
    """One key's waiting tasks of one priority, as far as they have been read (oldest first)."""

    owner: str | None
    in_window: int
    rows: list[_Row] = field(default_factory=list)
    # A read returned fewer than it asked for: `rows` is all of them.
    exhausted: bool = False

    def ranking_within(self, score: int) -> int:
        """How many of its tasks score at most `score` (as far as is known)."""
        ranked = max(0, score - self.in_window)
        return min(ranked, len(self.rows)) if self.exhausted else ranked


def least_score(queues: Sequence[KeyQueue[_Row]], limit: int) -> int | None:
    """The least score s with at least `limit` tasks scoring at most s; None if all the known
    tasks are fewer than `limit` (every queue exhausted)."""
    if limit <= 0 or not queues:
        return None
    if all(queue.exhausted for queue in queues) and sum(len(queue.rows) for queue in queues) < limit:
        return None
    # Some key not exhausted ranks a task at every score past its window's count, so `high` does.
    low = min(queue.in_window for queue in queues)
    high = max(queue.in_window for queue in queues) + limit
    while low < high:
        middle = (low + high) // 2
        if sum(queue.ranking_within(middle) for queue in queues) >= limit:
            high = middle
        else:
            low = middle + 1
    return low


def to_read(queues: Sequence[KeyQueue[_Row]], limit: int) -> list[tuple[KeyQueue[_Row], int]]:
    """The queues whose next tasks may still be among the first `limit`, with how many to read
    from each; empty once what has been read decides the first `limit`."""
    score = least_score(queues, limit)
    if score is None:
        return []
    reads = []
    for queue in queues:
        missing = max(0, score - queue.in_window) - len(queue.rows)
        if missing > 0 and not queue.exhausted:
            reads.append((queue, missing))
    return reads


def read(queue: KeyQueue[_Row], asked: int, rows: Iterable[_Row]) -> None:
    """Record the next tasks a read of `asked` returned (oldest first)."""
    got = list(rows)
    queue.rows.extend(got)
    if len(got) < asked:
        queue.exhausted = True


def first(queues: Iterable[KeyQueue[_Row]], limit: int) -> list[_Row]:
    """The first `limit` tasks in fair order, of those read (all the ones that can be, once
    `to_read` asks for nothing more)."""
    scored = [
        (queue.in_window + turn, row.id, row)
        for queue in queues
        for turn, row in enumerate(queue.rows, start=1)
    ]
    scored.sort(key=lambda entry: (entry[0], entry[1]))
    return [row for _, _, row in scored[: max(0, limit)]]
