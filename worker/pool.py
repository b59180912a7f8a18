"""Where Pillow runs: a pool of threads, or of single-threaded child processes (WORKER_POOL), for
light renders, each in a lane (worker/lanes.py: the regular ones and the urgent ones for interactive
tasks); a child process of its own, killed at its deadline, for each heavy one.

Threads share one interpreter; Pillow releases the GIL inside its codecs and resamplers, but not
everywhere (drawing text, Python-level loops over frames), so processes can use the cores better.
A child process also fails alone: one killed mid-render (out of memory) breaks the pool, which is
replaced, and the images it held come back as `RenderInterrupted` for the caller to retry.

Children ignore SIGINT and SIGTERM: the worker's main process decides when they stop (after its
in-flight images are finished), even when Ctrl-C reaches the whole process group.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Literal, TypeVar

from PIL import Image

from core.formats import configure_pillow
from worker.lanes import REGULAR, URGENT, Lane, Lanes

log = logging.getLogger(__name__)

T = TypeVar("T")
# Niceness added to a heavy render's child process (0 normal, 19 lowest).
HEAVY_NICENESS = 10
# Niceness added to the regular lanes' threads or children when the worker has urgent lanes: an
# interactive render in an urgent lane, the worker's event loop (claims, acks) and, on a shared host,
# the API and PostgreSQL, go first when the CPUs are busy with bulk renders; with the CPUs free it
# changes nothing. Between the urgent lanes (0) and the heavy lane.
REGULAR_NICENESS = 5
# Freed image memory a render process keeps for its next render (Pillow's block cache, in its
# 16 MB blocks). A child renders in its main thread, where glibc hands a freed 48 MB decode of a
# 12 MP photo back to the kernel and the next render faults it in again: about 25 ms of system CPU
# of a 115 ms render (BENCHMARKS.md, "12 MP photos end to end"). Four blocks hold one such decode,
# so a pooled child keeps up to 64 MB between renders. The worker's own render threads need none:
# glibc keeps their freed memory for reuse already.
CHILD_CACHED_BLOCKS = 4
PoolKind = Literal["threads", "processes"]
# What a render reports while it runs (its placeholder), called on the event loop.
Report = Callable[[Any], None]
# The kinds of message a killable child sends through its pipe: reports, then one answer.
_REPORTED, _DONE, _FAILED = "reported", "done", "failed"


class RenderInterrupted(Exception):
    """The child process rendering this image died (killed, out of memory) before it finished."""


class RenderTimedOut(Exception):
    """The render ran past its deadline and was killed: it would be as slow at every attempt."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"processing took longer than {seconds:g} s")
        self.seconds = seconds


class RenderPool:
    def __init__(
        self,
        kind: PoolKind,
        size: int,
        *,
        max_pixels: int,
        urgent_lanes: int = 0,
        on_lane: Callable[[Lane], None] | None = None,
    ) -> None:
        self.kind = kind
        self.size = size
        self._max_pixels = max_pixels
        # `size` regular lanes and the urgent ones (worker/lanes.py); the executor has a thread or
        # child for each, so a render admitted to a lane never queues behind another.
        self.lanes = Lanes(size, urgent_lanes)
        self._on_lane = on_lane
        # With urgent lanes, each kind of lane has threads or children of its own, the regular ones
        # below the urgent ones in CPU priority; without, one executor as before.
        self._executors: dict[Lane, Executor] = {REGULAR: self._new_executor(REGULAR)}
        if urgent_lanes:
            self._executors[URGENT] = self._new_executor(URGENT)

    def _new_executor(self, lane: Lane) -> Executor:
        if not self.lanes.urgent:
            workers, niceness = self.lanes.regular, 0
        elif lane == REGULAR:
            workers, niceness = self.lanes.regular, REGULAR_NICENESS
        else:
            workers, niceness = self.lanes.urgent, 0
        if self.kind == "threads":
            return ThreadPoolExecutor(
                max_workers=workers,
                thread_name_prefix=f"pillow-{lane}",
                initializer=_lower_this_thread,
                initargs=(niceness,),
            )
        # forkserver: children are forked from a clean single-threaded server, never from this
        # process with its event loop, threads and sockets.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["worker.render_job"])
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_start_child,
            initargs=(self._max_pixels, niceness),
        )

    async def run(
        self, function: Callable[..., T], *args: Any, report: Report | None = None, urgent: bool = False
    ) -> T:
        """`function(*args)` in the pool, once a lane is free: a regular one, or for an `urgent`
        (interactive) render an urgent one when every regular lane is busy. With `report`, the
        function is also given a `report` keyword argument, and what it reports reaches `report` on
        this event loop while it runs: in a thread only; a child process of the pool cannot call
        back, so the function gets no `report` there and must return what it would have reported."""
        async with self.lanes.taken(urgent=urgent) as lane:
            if self._on_lane is not None:
                self._on_lane(lane)
            return await self._run(lane, function, *args, report=report)

    async def _run(self, lane: Lane, function: Callable[..., T], *args: Any, report: Report | None) -> T:
        executor = self._executors[lane]
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if report is not None and self.kind == "threads":
            reported = report  # narrowed, for the closure

            def to_loop(value: Any) -> None:
                loop.call_soon_threadsafe(reported, value)

            kwargs["report"] = to_loop
        try:
            return await loop.run_in_executor(executor, partial(function, *args, **kwargs))
        except BrokenProcessPool as exc:
            if self._executors[lane] is executor:  # the first of its casualties replaces it
                log.error("a render process died (killed or out of memory); starting a new pool")
                self._executors[lane] = self._new_executor(lane)
                executor.shutdown(wait=False, cancel_futures=True)
            raise RenderInterrupted(str(exc) or "render process died") from exc

    async def run_killable(
        self, deadline_seconds: float, function: Callable[..., T], *args: Any, report: Report | None = None
    ) -> T:
        """`function(*args)` in a child process of its own, killed if it runs past `deadline_seconds`
        seconds (RenderTimedOut) or if the caller is cancelled; RenderInterrupted if it dies. With
        `report`, the function also gets a `report` keyword argument whose calls reach `report`
        here while it runs (through the child's pipe, ahead of its answer)."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["worker.render_job"])
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(
            target=_run_child,
            args=(sender, self._max_pixels, function, args, report is not None),
            name="render",
            daemon=True,
        )
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        try:
            # Starting asks the fork server over a socket: quick, but not for the event loop.
            await loop.run_in_executor(None, child.start)
            sender.close()
            loop.add_reader(receiver.fileno(), readable.set)
            try:
                async with asyncio.timeout(deadline_seconds):
                    kind, value = await _answer(receiver, readable, report)
            except TimeoutError:
                raise RenderTimedOut(deadline_seconds) from None
            except EOFError:
                raise RenderInterrupted(f"render process ended with status {child.exitcode}") from None
            finally:
                loop.remove_reader(receiver.fileno())
        finally:
            receiver.close()
            sender.close()
            if child.pid is not None:
                child.kill()  # nothing if it has ended; otherwise the render stops here
                await loop.run_in_executor(None, child.join)
                child.close()
        if kind == _FAILED:
            raise value
        return value

    def shutdown(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=True)


async def _answer(
    receiver: multiprocessing.connection.Connection, readable: asyncio.Event, report: Report | None
) -> tuple[str, Any]:
    """The child's answer (_DONE or _FAILED, and its value), passing its reports on meanwhile;
    EOFError if it ended without one. Each message is written whole once ready, so a readable pipe
    never blocks `recv` for long."""
    while True:
        await readable.wait()
        readable.clear()
        while receiver.poll():
            kind, value = receiver.recv()
            if kind != _REPORTED:
                return kind, value
            if report is not None:
                report(value)


def _run_child(
    answer: multiprocessing.connection.Connection,
    max_pixels: int,
    function: Callable[..., Any],
    args: tuple,
    reports: bool,
) -> None:
    _die_with_parent()
    _start_child(max_pixels)
    # Below the light renders and the event loop in CPU priority: a heavy render takes what the
    # cores have left, so it slows the light ones beside it as little as it can.
    os.nice(HEAVY_NICENESS)
    kwargs = {"report": partial(_send_report, answer)} if reports else {}
    try:
        result: tuple[str, Any] = (_DONE, function(*args, **kwargs))
    except Exception as exc:
        result = (_FAILED, exc)
    answer.send(result)
    answer.close()


def _send_report(answer: multiprocessing.connection.Connection, value: Any) -> None:
    answer.send((_REPORTED, value))


def _die_with_parent() -> None:
    """End this child when the worker that asked for it dies (SIGKILL, out of memory): a render left
    running would write an output the task's next owner also writes. Its parent is the fork server,
    which outlives the worker for as long as such a child holds the worker's end of its pipe, so
    the child watches the worker itself (the pipe it was started through, closed by the worker's
    death)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()


def _lower_this_thread(niceness: int) -> None:
    """A render thread's CPU priority (Linux keeps a niceness per thread)."""
    if niceness:
        try:
            os.setpriority(
                os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + niceness
            )
        except OSError as exc:  # a seccomp profile that forbids it: render at the usual priority
            log.warning("could not lower a render thread's CPU priority: %s", exc)


def _start_child(max_pixels: int, niceness: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if niceness:
        try:
            os.nice(niceness)
        except OSError as exc:
            log.warning("could not lower a render process's CPU priority: %s", exc)
    configure_pillow(max_pixels)
    Image.core.set_blocks_max(CHILD_CACHED_BLOCKS)
