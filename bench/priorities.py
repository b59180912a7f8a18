"""Priorities and fair share under a backlog (not a test): upload->done of one upload, idle and behind
a queue of other work.

    .venv/bin/python -m bench.priorities [--workers 2] [--concurrency 2] [--bulk 5000] [--flood 10000]
                                         [--samples 20] [--window N] [--urgent-places N]
                                         [--urgent-lanes N]

On throwaway servers (bench.stack), one API and `--workers` workers of `--concurrency` each (by
default one render per CPU: more would make every render slower when busy than idle, whatever the
queue does), with DISPATCH_WINDOW at the renders they run at once unless `--window` says otherwise,
DISPATCH_URGENT_PLACES at the workers unless `--urgent-places` says otherwise, and WORKER_URGENT_LANES
1 unless `--urgent-lanes` says otherwise (0 and 0: the window alone, as before those settings):

1. idle: `--samples` `interactive` uploads one after another, nothing else queued;
2. priority: `--bulk` `bulk` tasks queued (the workers busy with them), the same uploads again;
3. fairness: key A's `--flood` `normal` tasks queued, key B's `normal` uploads one after another.

Upload->done is the row's own `finished_at - upload_time` (the server's clock, from the body received
to the outputs recorded). The backlogs are made as uploads leave them (a row waiting in the outbox,
its file in UPLOADS_DIR), by copying one uploaded task's row and hard-linking its file, so that 10,000
tasks are queued in seconds; each is then processed like any other. Prints p50/p95 per phase and the
ratios to idle; the target (issue 18) is a priority p95 under 2x the idle p95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.images import photo_jpeg
from bench.stack import BenchStack

KEY_A = "bench-priorities-key-a-0123"
KEY_B = "bench-priorities-key-b-0123"
# The backlog's images: big enough that the workers stay busy for the whole measurement.
BACKLOG_SIZE = (1600, 1200)
SAMPLE_SIZE = (1600, 1200)


async def _upload(client: httpx.AsyncClient, key: str, body: bytes, priority: str) -> int:
    answer = await client.post(
        "/upload",
        files={"file": ("bench.jpg", body, "image/jpeg")},
        data={"priority": priority},
        headers={"X-API-Key": key},
    )
    answer.raise_for_status()
    return int(answer.json()["task_id"])


async def _upload_to_done(
    stack: BenchStack, client: httpx.AsyncClient, key: str, body: bytes, priority: str
) -> float:
    """Seconds from the upload's row to its outputs, by the row's own timestamps."""
    task_id = await _upload(client, key, body, priority)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        row = await stack.db.fetchrow(
            "SELECT status, extract(epoch FROM finished_at - upload_time) AS took"
            " FROM image_tasks WHERE id = $1",
            task_id,
        )
        if row["status"] == "done":
            return float(row["took"])
        if row["status"] == "failed":
            raise RuntimeError(f"task {task_id} failed")
        await asyncio.sleep(0.005)
    raise TimeoutError(f"task {task_id} not done within 600 s")


async def _samples(
    stack: BenchStack, client: httpx.AsyncClient, key: str, body: bytes, priority: str, count: int
) -> list[float]:
    return [await _upload_to_done(stack, client, key, body, priority) for _ in range(count)]


async def _queue_copies(
    stack: BenchStack, client: httpx.AsyncClient, key: str, body: bytes, priority: str, count: int
) -> None:
    """`count` tasks waiting in the outbox, as `count` uploads would leave them."""
    model = await _upload(client, key, body, priority)
    row = await stack.db.fetchrow("SELECT input_name FROM image_tasks WHERE id = $1", model)
    source = stack.uploads / row["input_name"]
    names = [f"{os.urandom(16).hex()}.jpg" for _ in range(count)]
    await asyncio.to_thread(_link_all, source, [stack.uploads / name for name in names])
    await stack.db.execute(
        """INSERT INTO image_tasks (filename, content_type, size_bytes, width, height, sha256, input_name,
                                    owner, processing, priority)
           SELECT filename, content_type, size_bytes, width, height, sha256, names.name, owner,
                  processing, priority
           FROM image_tasks, unnest($2::varchar[]) AS names(name) WHERE id = $1""",
        model,
        names,
    )
    # Wake the dispatcher at once (it also looks every OUTBOX_INTERVAL_SECONDS).
    await _upload(client, key, body, priority)


async def _clear_backlog(stack: BenchStack) -> None:
    """The rest of the backlog ends (as failed: final, so a message left for it is acknowledged)."""
    await stack.db.execute(
        "UPDATE image_tasks SET status = 'failed', error = 'cleared by the benchmark', finished_at = now()"
        " WHERE status = 'pending'"
    )


def _link_all(source: Path, targets: list[Path]) -> None:
    for target in targets:
        os.link(source, target)


async def _wait_busy(stack: BenchStack) -> None:
    """Until the workers have finished some of the backlog: they are busy with it."""
    done = (await stack.counts()).get("done", 0)
    await stack.wait_final(done + 20, within=120)


def _figures(name: str, values: list[float], idle_p95: float | None) -> str:
    p95 = _p95(values)
    ratio = f"  p95 = {p95 / idle_p95:.2f} x idle" if idle_p95 else ""
    return f"{name:<40} p50 {statistics.median(values) * 1000:7.0f} ms  p95 {p95 * 1000:7.0f} ms{ratio}"


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


async def run(args: argparse.Namespace) -> None:
    window = args.window if args.window is not None else args.workers * args.concurrency
    places = args.urgent_places if args.urgent_places is not None else args.workers
    with tempfile.TemporaryDirectory(prefix="bench-priorities-") as scratch:
        stack = BenchStack(Path(scratch))
        await stack.start()
        settings = {
            "DISPATCH_WINDOW": str(window),
            "DISPATCH_URGENT_PLACES": str(places),
            "WORKER_CONCURRENCY": str(args.concurrency),
            "WORKER_URGENT_LANES": str(args.urgent_lanes),
            "API_KEYS": f"{KEY_A},{KEY_B}",
        }
        stack.env.update(settings)
        sample = photo_jpeg(*SAMPLE_SIZE)
        backlog = photo_jpeg(*BACKLOG_SIZE)
        lines = [
            f"{args.workers} worker(s) x {args.concurrency} (+{args.urgent_lanes} urgent lane(s)), "
            f"DISPATCH_WINDOW {window} (+{places} urgent place(s)), {args.samples} samples a phase, "
            f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}"
        ]
        try:
            async with (
                stack.api() as api,
                stack.workers(args.workers),
                httpx.AsyncClient(base_url=api.base_url, timeout=120) as client,
            ):
                await _samples(stack, client, KEY_B, sample, "interactive", 3)  # warm up
                idle = await _samples(stack, client, KEY_B, sample, "interactive", args.samples)
                idle_p95 = _p95(idle)
                lines.append(_figures("idle, interactive", idle, None))

                await _queue_copies(stack, client, KEY_A, backlog, "bulk", args.bulk)
                await _wait_busy(stack)
                # The bulk backlog's own key: only the priority can put these uploads ahead.
                busy = await _samples(stack, client, KEY_A, sample, "interactive", args.samples)
                lines.append(_figures(f"{args.bulk} bulk queued, interactive", busy, idle_p95))
                await _clear_backlog(stack)

                await _queue_copies(stack, client, KEY_A, backlog, "normal", args.flood)
                await _wait_busy(stack)
                fair = await _samples(stack, client, KEY_B, sample, "normal", args.samples)
                lines.append(_figures(f"key A's {args.flood} queued, key B normal", fair, idle_p95))
                left = (await stack.counts()).get("pending", 0)
                lines.append(f"(key A's tasks still waiting at the end: {left})")
                lines.append(f"load average at the end {os.getloadavg()[0]:.1f}")
        finally:
            await stack.stop()
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--window", type=int, default=None, help="DISPATCH_WINDOW (default: what the workers hold)"
    )
    parser.add_argument(
        "--urgent-places",
        type=int,
        default=None,
        help="DISPATCH_URGENT_PLACES (default: the workers)",
    )
    parser.add_argument("--urgent-lanes", type=int, default=1, help="WORKER_URGENT_LANES")
    parser.add_argument("--bulk", type=int, default=5000)
    parser.add_argument("--flood", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
