"""What a worker spends around each image, thread by thread: a drain of small tasks by one worker.

    .venv/bin/python -m bench.worker_threads [--tasks 2000] [--reps 2] [--ref main]
        [--count-seconds 4] [--strace-seconds 4] [--perf-seconds 4] [--env NAME=VALUE ...]

Uploads `--tasks` small (0.27 MP) tasks through the API, then starts one worker with the default
settings (WORKER_CONCURRENCY, lanes, pool) and, while it empties the queue, reads from
/proc/<pid>/task every thread's CPU time (user and system) and context switches (voluntary and not),
per image, grouped by thread name: the event loop (`main`), the render threads (`pillow-regular_*`,
`pillow-urgent_*`), and any other. With `--ref`, that git ref's tree is exported and drained in turns
with the working tree's (as bench.compare does).

With `--count-seconds` / `--strace-seconds` / `--perf-seconds`, one more drain each is traced for
that long: context switches and system calls per image from `perf stat` (futex, the GIL's and the
queues' hand-overs, among them; it hardly slows the worker), syscalls per image by name
(`strace -f -c`: strace slows the worker, and so multiplies its GIL contention: read its futex count
as an upper bound), and perf's hottest symbols, with the share in the scheduler's switch (what a
cross-thread hand-over costs in the kernel). Needs perf, strace, and the right to trace.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.compare import export_tree
from bench.images import photo_jpeg
from bench.stack import BenchStack
from bench.suite import SMALL, Plan, Suite
from devstack.stack import PROJECT_ROOT

TICKS = os.sysconf("SC_CLK_TCK")
# Counted by `perf stat` over the worker's threads: context switches, every system call, and the
# ones that make or wait for a hand-over between threads (futex: the GIL, locks, queues).
COUNTED_EVENTS = (
    "context-switches",
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_getpid",
)


def thread_group(pid: int, tid: str, name: str) -> str:
    if tid == str(pid):
        return "event loop (main)"
    # pillow-regular_0, asyncio_3, ThreadPoolExecutor-1_0: the pool, not the thread, is the group.
    return re.sub(r"_\d+$", "_*", name)


def threads(pid: int) -> dict[str, tuple[str, int, int, int, int]]:
    """tid -> (group, user ticks, system ticks, voluntary switches, involuntary switches), for the
    worker's threads and its child processes' (WORKER_POOL=processes, the fork server)."""
    found = _threads_of(pid, pid)
    for child in _descendants(pid):
        found.update(
            {tid: ("child processes", *figures) for tid, (_, *figures) in _threads_of(child, -1).items()}
        )
    return found


def _descendants(pid: int) -> list[int]:
    try:
        children = [
            int(child)
            for task in os.listdir(f"/proc/{pid}/task")
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _threads_of(pid: int, main: int) -> dict[str, tuple[str, int, int, int, int]]:
    found = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return {}
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = dict(re.findall(r"^(\w+ctxt_switches):\s+(\d+)", status, re.M))
        found[tid] = (
            thread_group(main, tid, name),
            int(fields[11]),
            int(fields[12]),
            int(switches["voluntary_ctxt_switches"]),
            int(switches["nonvoluntary_ctxt_switches"]),
        )
    return found


def per_image(before: dict, after: dict, images: int) -> dict[str, dict[str, float]]:
    """Group -> CPU ms (user, sys) and switches (voluntary, involuntary) per image."""
    sums: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    for tid, (group, *counts) in after.items():
        start = before.get(tid, (group, 0, 0, 0, 0))[1:]
        figures = sums[group]
        figures[4] += 1
        for index, (now, then) in enumerate(zip(counts, start, strict=True)):
            figures[index] += now - then
    return {
        group: {
            "threads": figures[4],
            "user_ms": figures[0] / TICKS * 1000 / images,
            "sys_ms": figures[1] / TICKS * 1000 / images,
            "vol": figures[2] / images,
            "invol": figures[3] / images,
        }
        for group, figures in sums.items()
    }


async def drain(
    suite: Suite, root: Path, tasks: int, env: dict[str, str], traced: str | None, seconds: float, out: Path
) -> dict[str, Any]:
    stack = suite.stack
    await stack.empty()
    async with stack.api(root=root, env=env) as api:
        await suite.load(api.port, "small", count=tasks, concurrency=16, max_seconds=120)
        async with stack.workers(1, root=root, env=env) as (pid,):
            before, started = threads(pid), time.monotonic()
            done_before = (await stack.counts()).get("done", 0)
            if traced is not None:
                await asyncio.sleep(0.5)  # past start-up, into the steady drain
                before = threads(pid)
                done_before = (await stack.counts()).get("done", 0)
                text = await _trace(traced, pid, seconds, out)
                done = (await stack.counts()).get("done", 0) - done_before
                await stack.wait_final(tasks, within=600)
                return {"images": done, "trace": text}
            counts = await stack.wait_final(tasks, within=300)
            after, elapsed = threads(pid), time.monotonic() - started
    done = counts.get("done", 0) - done_before
    return {"images": done, "rate": done / elapsed, "groups": per_image(before, after, max(done, 1))}


async def _trace(kind: str, pid: int, seconds: float, out: Path) -> str:
    if kind == "strace":
        target = out / "strace.txt"
        command = ["strace", "-f", "-c", "-o", str(target), "-p", str(pid)]
    elif kind == "counts":
        target = out / "counts.txt"
        events = ",".join(COUNTED_EVENTS)
        command = ["perf", "stat", "-x", ",", "-e", events, "-o", str(target), "-p", str(pid)]
    else:
        target = out / "perf.data"
        command = ["perf", "record", "-g", "-o", str(target), "-p", str(pid)]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await asyncio.sleep(seconds)
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.wait(), 30)
    if kind in ("strace", "counts"):
        return target.read_text()
    report = await asyncio.create_subprocess_exec(
        *("perf", "report", "-i", str(target), "--stdio", "--no-children", "--sort", "comm,sym"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    stdout, _ = await report.communicate()
    return stdout.decode()


def show_groups(label: str, result: dict[str, Any]) -> None:
    groups = result["groups"]
    total = {key: sum(g[key] for g in groups.values()) for key in ("user_ms", "sys_ms", "vol", "invol")}
    print(f"\n{label}: {result['images']} images, {result['rate']:.0f} images/s")
    print("| threads | n | user ms/image | sys ms/image | CPU ms/image | vol. switches | invol. switches |")
    print("|---|---|---|---|---|---|---|")
    for group, g in sorted(groups.items(), key=lambda item: -(item[1]["user_ms"] + item[1]["sys_ms"])):
        cpu = g["user_ms"] + g["sys_ms"]
        print(
            f"| {group} | {g['threads']} | {g['user_ms']:.2f} | {g['sys_ms']:.2f} | {cpu:.2f} "
            f"| {g['vol']:.1f} | {g['invol']:.1f} |"
        )
    cpu = total["user_ms"] + total["sys_ms"]
    print(
        f"| **all** | | {total['user_ms']:.2f} | {total['sys_ms']:.2f} | **{cpu:.2f}** "
        f"| {total['vol']:.1f} | {total['invol']:.1f} |"
    )


def show_strace(images: int, text: str) -> None:
    print(f"\nsyscalls per image ({images} images while traced):")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit():
            calls, name = int(parts[3]), parts[-1]
            if calls / max(images, 1) >= 0.05:
                print(f"  {calls / max(images, 1):7.2f}  {name}")
        elif len(parts) >= 3 and parts[-1] == "total":
            print(f"  {int(parts[2]) / max(images, 1):7.2f}  total")


def show_counts(images: int, text: str) -> None:
    print(f"\nper image ({images} images while counted; perf stat, which hardly slows the worker):")
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].strip().isdigit():
            print(f"  {int(fields[0]) / max(images, 1):8.2f}  {fields[2]}")


def show_perf(text: str, top: int = 30) -> None:
    print("\nperf, by share of samples (self):")
    shown = 0
    switch = 0.0
    for line in text.splitlines():
        match = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(\S+)", line)
        if not match:
            continue
        share, comm, symbol = float(match[1]), match[2], match[3]
        if symbol in ("finish_task_switch", "finish_task_switch.isra.0", "_raw_spin_unlock_irqrestore"):
            switch += share
        if shown < top:
            print(f"  {share:6.2f}%  {comm:18s} {symbol}")
            shown += 1
    print(f"  finish_task_switch + _raw_spin_unlock_irqrestore: {switch:.1f}% of the samples")


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-worker-threads-"))
    args.out.mkdir(parents=True, exist_ok=True)
    roots = {"working tree": PROJECT_ROOT}
    if args.ref:
        roots = {args.ref: export_tree(args.ref, workdir / "ref"), **roots}
    env = dict(pair.split("=", 1) for pair in args.env)
    stack = BenchStack(workdir)
    try:
        small = workdir / "small.jpg"
        small.write_bytes(photo_jpeg(*SMALL))
        await stack.start()
        suite = Suite(stack, Plan.quick(1), {"small": small})
        print(f"load average before: {os.getloadavg()}")
        for rep in range(args.reps):
            for label, root in roots.items():
                result = await drain(suite, root, args.tasks, env, None, 0, args.out)
                show_groups(f"{label}, repetition {rep + 1}", result)
                print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        traces = {"counts": args.count_seconds, "strace": args.strace_seconds, "perf": args.perf_seconds}
        for kind, seconds in traces.items():
            if not seconds:
                continue
            for label, root in roots.items():
                result = await drain(suite, root, max(args.tasks, 3000), env, kind, seconds, args.out)
                print(f"\n{label}, {kind}:")
                if kind == "counts":
                    show_counts(result["images"], result["trace"])
                elif kind == "strace":
                    show_strace(result["images"], result["trace"])
                else:
                    show_perf(result["trace"])
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--ref", help="also drain this git ref's code, in turns with the working tree")
    parser.add_argument("--count-seconds", type=float, default=0.0, help="perf stat: switches, syscalls")
    parser.add_argument("--strace-seconds", type=float, default=0.0)
    parser.add_argument("--perf-seconds", type=float, default=0.0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "imagequeue-worker-threads")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
