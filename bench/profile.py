"""Where the time goes: py-spy on the API during ingest, and on a worker during a drain.

    .venv/bin/python -m bench.profile [--seconds 8] [--out /tmp/imagequeue-profiles]

Starts the same throwaway stack as the suite, puts the load on, and samples the process under test
with py-spy (`record --format raw`, non-blocking). Prints, for each profile, the functions by
inclusive and by own share of the samples, and keeps the collapsed stacks (flame-graph input) and
an SVG flame graph in `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
from pathlib import Path

from bench.images import photo_jpeg
from bench.stack import BenchStack
from bench.suite import SMALL, Plan, Suite


async def _record(pid: int, seconds: float, out: Path, rate: int) -> asyncio.subprocess.Process:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return await asyncio.create_subprocess_exec(
        *(py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)),
        *("--nonblocking", "--format", "raw", "--output", str(out)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def summarise(collapsed: Path, *, top: int = 30) -> str:
    """Inclusive and own shares of the samples, by function (file:function)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(frame) for frame in stack.split(";") if frame]
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    lines = [f"{collapsed.name}: {total} samples"]
    for title, counter in (("inclusive", inclusive), ("own", own)):
        lines.append(f"  by {title} share:")
        lines += [f"    {n / total:6.1%}  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; keep the function and the file's tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    tail = "/".join(parts[-2:]) if parts else path
    return f"{name} ({tail})"


async def profile(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-profile-"))
    args.out.mkdir(parents=True, exist_ok=True)
    stack = BenchStack(workdir, uvicorn_args=tuple(args.uvicorn_arg))
    try:
        small = workdir / "small.jpg"
        small.write_bytes(photo_jpeg(*SMALL))
        await stack.start()
        suite = Suite(stack, Plan.quick(1), {"small": small})
        if "ingest" in args.what:
            await stack.empty()
            async with stack.api() as api:
                await suite.load(api.port, "small", count=200, concurrency=16, max_seconds=5)
                out = args.out / "api-ingest-c16.txt"
                recorder = await _record(api.process.pid, args.seconds, out, args.rate)
                result = await suite.load(
                    api.port, "small", count=100_000, concurrency=16, max_seconds=args.seconds + 1
                )
                await recorder.wait()
                rate = len(result["latencies"]) / result["elapsed"]
                print(f"ingest c16: {rate:.0f} uploads/s while profiled")
                print(summarise(out))
        if "drain" in args.what:
            await stack.empty()
            async with stack.api() as api:
                await suite.load(api.port, "small", count=args.drain_tasks, concurrency=16, max_seconds=120)
            async with stack.workers(1) as (pid,):
                out = args.out / "worker-drain.txt"
                recorder = await _record(pid, args.seconds, out, args.rate)
                await recorder.wait()
            print(summarise(out))
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "imagequeue-profiles")
    parser.add_argument("--what", action="append", choices=("ingest", "drain"))
    parser.add_argument("--drain-tasks", type=int, default=3000)
    parser.add_argument("--uvicorn-arg", action="append", default=[])
    args = parser.parse_args()
    args.what = args.what or ["ingest", "drain"]
    asyncio.run(profile(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
