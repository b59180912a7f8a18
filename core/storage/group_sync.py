"""Files put in place durably in batches, by one thread: the group commit of the `local` backend.

Putting an upload in place durably is three system calls that wait for the disk (sync the file,
rename it, sync its folder). Each in its own thread hop cost the API more than the calls: at 16
uploads in flight, 63 context switches and about 1.2 ms of CPU per upload went to waking threads and
handing the GIL to and fro, a third of the API's CPU per upload (BENCHMARKS.md). Here one thread
takes every file waiting when it wakes, syncs and renames each, syncs each folder once for all of
them, and settles the whole batch with one call back into each event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.storage.base import sync_path


@dataclass
class _Placement:
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    temp: Path
    final: Path
    make_folder: bool
    error: BaseException | None = None


class GroupSync:
    """Puts temporary files in place as `place` says, in batches; one thread, started on first use."""

    def __init__(self) -> None:
        self._waiting: queue.SimpleQueue[_Placement | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        # What the batches were, for tests and curious operators: files placed, and batches.
        self.files = 0
        self.batches = 0

    async def place(self, temp: Path, final: Path, *, make_folder: bool = False) -> None:
        """Sync `temp`, rename it to `final` (same filesystem; an earlier `final` is replaced) and
        sync `final`'s folder, so `final` is complete and survives a crash; `temp` is gone after.
        `make_folder`: create `final`'s folder first if missing. Raises what stopped it, an OSError
        as a rule (then `final` is not there: a rename whose folder could not be synced is undone)."""
        loop = asyncio.get_running_loop()
        placement = _Placement(loop, loop.create_future(), temp, final, make_folder)
        self._ensure_thread()
        self._waiting.put(placement)
        # Shielded: a cancelled caller does not stop a placement under way (it is answered at once,
        # where a thread hop of its own made it wait; the file is placed or not either way).
        await asyncio.shield(placement.done)

    def close(self) -> None:
        """Let the thread end once the placements given to it are done (a later `place` starts
        another)."""
        with self._start:
            if self._thread is not None:
                self._waiting.put(None)
                self._thread = None

    def _ensure_thread(self) -> None:
        # Not alive: started before this process was forked from its parent (threads do not cross
        # a fork), or ended by close().
        if self._thread is None or not self._thread.is_alive():
            with self._start:
                if self._thread is None or not self._thread.is_alive():
                    # A daemon: a process that exits without closing its storage is not held up by it.
                    self._thread = threading.Thread(target=self._run, name="group-sync", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                return
            batch = [first]
            ending = False
            while not ending:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    ending = True
                else:
                    batch.append(more)
            try:
                _place_all(batch)
            except BaseException as exc:  # a bug, not the disk: fail the batch, never leave it waiting
                for placement in batch:
                    placement.error = placement.error or exc
            finally:
                self.files += len(batch)
                self.batches += 1
                _settle_in_loops(batch)
            if ending:
                return


def _place_all(batch: list[_Placement]) -> None:
    # First every file's write-out is started, then each is synced: on a journalled filesystem the
    # first sync's commit then carries the others' data too, where syncing them one by one from
    # scratch made one commit each (a thread per file let the journal merge them; one thread
    # syncing in turn was 0.5-0.8x as fast on ext4 with a journal, BENCHMARKS.md).
    opened: list[tuple[_Placement, int]] = []
    folders: dict[Path, list[_Placement]] = {}
    try:
        for placement in batch:
            try:
                if placement.make_folder:
                    placement.final.parent.mkdir(exist_ok=True)
                descriptor = os.open(placement.temp, os.O_RDONLY)
            except Exception as exc:  # OSError, or ValueError for a path no file can have
                placement.error = exc
            else:
                opened.append((placement, descriptor))
                _start_writing_out(descriptor)
        while opened:
            placement, descriptor = opened.pop(0)
            try:
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                os.replace(placement.temp, placement.final)
            except Exception as exc:
                placement.error = exc
            else:
                folders.setdefault(placement.final.parent, []).append(placement)
    finally:
        for _, descriptor in opened:  # only after an unexpected exception
            with contextlib.suppress(OSError):
                os.close(descriptor)
    for folder, placed in folders.items():
        try:
            sync_path(folder, folder=True)
        except OSError as exc:
            for placement in placed:
                placement.error = exc
                with contextlib.suppress(OSError):
                    placement.final.unlink()


def _writing_out_starter() -> Callable[[int], None]:
    """sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): start writing a file's dirty pages out,
    without waiting (Linux; Python has no binding). Elsewhere, or without it in the C library, a
    function that does nothing: each sync then writes its own file out, as before."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if function is None:
        return lambda descriptor: None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return lambda descriptor: function(descriptor, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: no check


_SYNC_FILE_RANGE_WRITE = 2
_start_writing_out = _writing_out_starter()


def _settle_in_loops(batch: list[_Placement]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Placement]] = {}
    for placement in batch:
        by_loop.setdefault(placement.loop, []).append(placement)
    for loop, placements in by_loop.items():
        # A loop closed meanwhile has nobody left waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, placements)


def _settle(placements: list[_Placement]) -> None:
    for placement in placements:
        if placement.done.done():
            continue
        if placement.error is not None:
            placement.done.set_exception(placement.error)
        else:
            placement.done.set_result(None)
