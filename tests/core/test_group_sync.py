"""GroupSync: temporary files put in place durably in batches by one thread (core/storage/group_sync.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import pytest

from core.storage import group_sync
from core.storage.group_sync import GroupSync

FILES = 50


def _temps(folder: Path, count: int) -> list[Path]:
    temps = []
    for index in range(count):
        temp = folder / f".tmp-{index}"
        temp.write_bytes(f"file {index}".encode() * 100)
        temps.append(temp)
    return temps


async def test_files_placed_at_once_land_complete_in_fewer_batches_than_files(tmp_path: Path) -> None:
    sync = GroupSync()
    temps = _temps(tmp_path, FILES)
    try:
        await asyncio.gather(*(sync.place(temp, tmp_path / f"final-{i}") for i, temp in enumerate(temps)))
    finally:
        sync.close()
    for index, temp in enumerate(temps):
        assert not temp.exists()
        assert (tmp_path / f"final-{index}").read_bytes() == f"file {index}".encode() * 100
    assert sync.files == FILES
    # Placements that wait together share a batch (and its folder sync): that is the point.
    assert sync.batches < FILES


async def test_a_failed_placement_fails_alone(tmp_path: Path) -> None:
    sync = GroupSync()
    good = _temps(tmp_path, 3)
    try:
        results = await asyncio.gather(
            sync.place(good[0], tmp_path / "a"),
            sync.place(tmp_path / ".tmp-missing", tmp_path / "b"),
            sync.place(good[1], tmp_path / "c"),
            sync.place(good[2], tmp_path / "no-such-folder" / "d"),
            return_exceptions=True,
        )
    finally:
        sync.close()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], FileNotFoundError)
    assert isinstance(results[3], FileNotFoundError)
    assert (tmp_path / "a").exists() and (tmp_path / "c").exists()
    assert not (tmp_path / "b").exists()
    assert good[2].exists()  # not moved: the caller still owns (and removes) it


async def test_make_folder_creates_the_final_folder(tmp_path: Path) -> None:
    sync = GroupSync()
    (temp,) = _temps(tmp_path, 1)
    try:
        await sync.place(temp, tmp_path / "pieces" / "one", make_folder=True)
    finally:
        sync.close()
    assert (tmp_path / "pieces" / "one").read_bytes() == b"file 0" * 100


async def test_a_cancelled_caller_does_not_stop_its_placement(tmp_path: Path) -> None:
    sync = GroupSync()
    (temp,) = _temps(tmp_path, 1)
    final = tmp_path / "final"
    try:
        task = asyncio.create_task(sync.place(temp, final))
        await asyncio.sleep(0)  # the placement is handed over
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while not final.exists():
            assert time.monotonic() < deadline, "the placement was dropped"
            await asyncio.sleep(0.01)
    finally:
        sync.close()
    assert not temp.exists()


def test_one_thread_serves_event_loops_in_turn_and_ends_when_closed(tmp_path: Path) -> None:
    sync = GroupSync()
    temps = _temps(tmp_path, 2)
    asyncio.run(sync.place(temps[0], tmp_path / "first"))
    thread = sync._thread
    assert thread is not None and thread.is_alive()
    asyncio.run(sync.place(temps[1], tmp_path / "second"))
    assert sync._thread is thread
    sync.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    # A placement after close starts a thread again.
    (again,) = _temps(tmp_path, 1)  # `.tmp-0` again: the first was moved
    asyncio.run(sync.place(again, tmp_path / "third"))
    sync.close()
    assert (tmp_path / "first").exists() and (tmp_path / "second").exists() and (tmp_path / "third").exists()


def _place_in_forked_child(sync: GroupSync, temp: Path, final: Path) -> None:
    asyncio.run(asyncio.wait_for(sync.place(temp, final), timeout=10))


def test_a_forked_child_starts_its_own_thread(tmp_path: Path) -> None:
    """A process forked after the thread started has no such thread: its first placement starts one
    instead of waiting forever for a thread that is not there."""
    sync = GroupSync()
    first, second = _temps(tmp_path, 2)
    asyncio.run(sync.place(first, tmp_path / "parent"))
    child = multiprocessing.get_context("fork").Process(
        target=_place_in_forked_child, args=(sync, second, tmp_path / "child")
    )
    child.start()
    child.join(timeout=30)
    sync.close()
    assert child.exitcode == 0
    assert (tmp_path / "child").read_bytes() == b"file 1" * 100


async def test_a_placement_no_path_can_have_fails_alone_and_the_thread_goes_on(tmp_path: Path) -> None:
    sync = GroupSync()
    good, later = _temps(tmp_path, 2)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                sync.place(tmp_path / "bad\0name", tmp_path / "x"),
                sync.place(good, tmp_path / "good"),
                return_exceptions=True,
            ),
            timeout=10,
        )
        assert isinstance(results[0], ValueError)
        assert results[1] is None and (tmp_path / "good").exists()
        await asyncio.wait_for(sync.place(later, tmp_path / "later"), timeout=10)
    finally:
        sync.close()
    assert (tmp_path / "later").exists()


def test_a_batch_starts_writing_every_file_out_before_syncing_any(tmp_path: Path) -> None:
    """On Linux the write-out is started by sync_file_range (through ctypes: Python has no binding),
    so that on a journalled filesystem one commit carries the batch; elsewhere it is skipped."""
    (temp,) = _temps(tmp_path, 1)
    with open(temp, "rb") as handle:
        assert group_sync._start_writing_out(handle.fileno()) == 0  # the C call ran, and succeeded
