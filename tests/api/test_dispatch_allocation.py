"""How the dispatcher shares free places in the window between priorities (api.dispatcher.allocate),
and which of the workers' words wake a pass."""

from __future__ import annotations

from api.dispatcher import Dispatcher, DispatchPolicy, allocate
from api.publisher import TaskPublisher
from core.db import make_engine, make_sessionmaker
from core.models import Priority

INTERACTIVE, NORMAL, BULK = Priority.INTERACTIVE, Priority.NORMAL, Priority.BULK


def test_free_places_go_to_interactive_first_then_normal_then_bulk() -> None:
    granted = allocate(5, 40, {NORMAL: 10, BULK: 10}, {INTERACTIVE: 3, NORMAL: 1, BULK: 50})
    assert granted == {INTERACTIVE: 3, NORMAL: 1, BULK: 1}


def test_bulk_is_owed_its_share_of_the_window_however_much_interactive_work_waits() -> None:
    # A window of 40: bulk is owed 4 places; with 1 of its own in the window, 3 of the 5 free ones.
    granted = allocate(5, 40, {INTERACTIVE: 35, BULK: 1}, {INTERACTIVE: 1000, BULK: 1000})
    assert granted == {INTERACTIVE: 2, NORMAL: 0, BULK: 3}


def test_a_small_window_still_owes_each_lower_class_one_place() -> None:
    granted = allocate(1, 4, {INTERACTIVE: 3}, {INTERACTIVE: 10, BULK: 10})
    assert granted == {INTERACTIVE: 0, NORMAL: 0, BULK: 1}
    # Once bulk has its place, the next free one is interactive's again.
    assert allocate(1, 4, {INTERACTIVE: 2, BULK: 1}, {INTERACTIVE: 10, BULK: 10})[INTERACTIVE] == 1


def test_nothing_is_granted_beyond_what_waits_or_what_is_free() -> None:
    assert allocate(10, 32, {}, {NORMAL: 2}) == {INTERACTIVE: 0, NORMAL: 2, BULK: 0}
    assert sum(allocate(3, 32, {}, {INTERACTIVE: 9, NORMAL: 9, BULK: 9}).values()) == 3


def _dispatcher(window: int) -> Dispatcher:
    """A dispatcher not started: nothing connects until a pass runs."""
    engine = make_engine("postgresql+asyncpg://nobody@/none?host=/nonexistent", pool_size=1)
    return Dispatcher(
        make_sessionmaker(engine), TaskPublisher("nats://127.0.0.1:1"), DispatchPolicy(window, 5)
    )


async def test_workers_words_wake_a_pass_per_eighth_of_a_large_window_and_each_for_a_small_one() -> None:
    large, small = _dispatcher(32), _dispatcher(4)
    for dispatcher in (large, small):
        dispatcher._backlog = True  # the last pass left tasks waiting for room
    for _ in range(3):
        large.wake()
    assert not large._wake.is_set(), "3 of 32 places freed: the stream still holds 29"
    large.wake()
    assert large._wake.is_set()
    small.wake()
    assert small._wake.is_set()


async def test_without_tasks_waiting_for_room_a_workers_word_wakes_nothing() -> None:
    dispatcher = _dispatcher(4)
    for _ in range(10):
        dispatcher.wake()
    assert not dispatcher._wake.is_set()
