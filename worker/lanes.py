"""Which light render runs now: WORKER_CONCURRENCY regular lanes, and WORKER_URGENT_LANES urgent ones
that only an `interactive` task may take.

The dispatcher lets an interactive task into a full window (DISPATCH_URGENT_PLACES), so it reaches
a worker whose regular lanes are all busy with bulk renders; without a lane of its own it would wait
for one of them to end, which is the whole of the latency priorities are meant to remove. So:

- a render takes a free regular lane, first come first served, whatever its priority;
- an interactive render that finds every regular lane busy takes a free urgent lane instead;
- nothing else ever takes an urgent lane: a normal or bulk render waits for a regular one, so the
  renders at once stay WORKER_CONCURRENCY unless an urgent task is among them.

A freed regular lane goes to the render that has waited longest (of any priority: no one starves
within a worker); a freed urgent lane to the interactive render that has waited longest, if any.
Heavy renders are not here: they have their own lane, one at a time (worker/consumer.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

Lane = Literal["regular", "urgent"]
REGULAR: Lane = "regular"
URGENT: Lane = "urgent"


class Lanes:
    def __init__(self, regular: int, urgent: int) -> None:
        self.regular = regular
        self.urgent = urgent
        self._free: dict[Lane, int] = {REGULAR: regular, URGENT: urgent}
        # Renders waiting for a lane, oldest first: whether each may take an urgent one.
        self._waiting: deque[tuple[bool, asyncio.Future[Lane]]] = deque()

    @property
    def total(self) -> int:
        """The most renders at once."""
        return self.regular + self.urgent

    @asynccontextmanager
    async def taken(self, *, urgent: bool) -> AsyncIterator[Lane]:
        """Hold a lane for the block (waiting for one if none is free); which lane it is."""
        lane = self._take(urgent)
        if lane is None:
            waiter = (urgent, asyncio.get_running_loop().create_future())
            self._waiting.append(waiter)
            try:
                lane = await waiter[1]
            except BaseException:
                # Cancelled while waiting: out of the line, or, if a lane was handed over just
                # before, handed on.
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                elif waiter[1].done() and not waiter[1].cancelled():
                    self._give(waiter[1].result())
                raise
        try:
            yield lane
        finally:
            self._give(lane)

    def _take(self, urgent: bool) -> Lane | None:
        # A free regular lane means no one waits (a freed one goes to the first waiter).
        if self._free[REGULAR]:
            self._free[REGULAR] -= 1
            return REGULAR
        if urgent and self._free[URGENT]:
            self._free[URGENT] -= 1
            return URGENT
        return None

    def _give(self, lane: Lane) -> None:
        for waiter in self._waiting:
            may_take_urgent, future = waiter
            if lane == REGULAR or may_take_urgent:
                self._waiting.remove(waiter)
                future.set_result(lane)
                return
        self._free[lane] += 1
