"""Admission by cost (not a test): a normal upload's upload→done time, idle and with heavy tasks
queued, for one worker process (two render slots).

    .venv/bin/python -m bench.admission [--normal 30] [--heavy 6] [--interval 0.5]

Heavy: a 3000 × 3000 JPEG with twenty blurs (~8 s of one core; 189 M pixel-steps, over
HEAVY_RENDER_PIXELS). Normal: a 640 × 480 JPEG with the default preset. Each scenario uploads the
normal images one at a time, `interval` seconds apart, and reads upload→done from the rows' own
timestamps (upload_time, finished_at). Scenarios:

- idle: normal uploads only;
- by cost: the heavy tasks queued first, as shipped (heavy renders one at a time in their own
  process; a heavy task that finds that lane taken waits in the queue);
- by count: the same with HEAVY_RENDER_PIXELS so high that every render is light, i.e. renders
  admitted by count alone, as before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.stack import BenchStack
from tests import images

HEAVY_OPS = json.dumps([{"op": "blur", "radius": 50}] * 20)
EVERYTHING_LIGHT = str(10**15)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def scenario(
    stack: BenchStack, *, heavy: int, normal: int, interval: float, worker_env: dict[str, str]
) -> dict[str, float]:
    await stack.empty()
    heavy_data = images.jpeg(3000, 3000)
    normal_data = images.jpeg(640, 480)
    heavy_file = {"file": ("heavy.jpg", heavy_data, "image/jpeg")}
    normal_file = {"file": ("normal.jpg", normal_data, "image/jpeg")}
    async with (
        stack.api() as api,
        stack.workers(1, env=worker_env),
        httpx.AsyncClient(base_url=api.base_url, timeout=60) as client,
    ):
        for _ in range(heavy):
            response = await client.post("/upload", files=heavy_file, data={"ops": HEAVY_OPS})
            response.raise_for_status()
        normal_ids = []
        for _ in range(normal):
            response = await client.post("/upload", files=normal_file)
            response.raise_for_status()
            normal_ids.append(response.json()["task_id"])
            await asyncio.sleep(interval)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            finished = await stack.db.fetchval(
                "SELECT count(*) FROM image_tasks WHERE id = ANY($1::int[]) AND finished_at IS NOT NULL",
                normal_ids,
            )
            if finished == len(normal_ids):
                break
            await asyncio.sleep(0.1)
        rows = await stack.db.fetch(
            "SELECT status, extract(epoch FROM finished_at - upload_time) AS seconds"
            " FROM image_tasks WHERE id = ANY($1::int[])",
            normal_ids,
        )
        heavy_rows = await stack.db.fetch(
            "SELECT status, attempts FROM image_tasks WHERE NOT (id = ANY($1::int[]))", normal_ids
        )
    seconds = [float(row["seconds"]) for row in rows if row["seconds"] is not None]
    return {
        "normal_done": sum(row["status"] == "done" for row in rows),
        "normal_p50_s": statistics.median(seconds) if seconds else float("nan"),
        "normal_p95_s": percentile(seconds, 0.95) if seconds else float("nan"),
        "normal_max_s": max(seconds) if seconds else float("nan"),
        "heavy_done_when_normals_done": sum(row["status"] == "done" for row in heavy_rows),
    }


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-admission-"))
    stack = BenchStack(workdir)
    await stack.start()
    try:
        results = {
            "idle": await scenario(stack, heavy=0, normal=args.normal, interval=args.interval, worker_env={}),
            "heavy queued, by cost": await scenario(
                stack, heavy=args.heavy, normal=args.normal, interval=args.interval, worker_env={}
            ),
            "heavy queued, by count": await scenario(
                stack,
                heavy=args.heavy,
                normal=args.normal,
                interval=args.interval,
                worker_env={"HEAVY_RENDER_PIXELS": EVERYTHING_LIGHT},
            ),
        }
    finally:
        await stack.stop()
    print(f"{'scenario':<24} {'done':>5} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'heavy done':>10}")
    for name, figures in results.items():
        print(
            f"{name:<24} {figures['normal_done']:>5.0f} {figures['normal_p50_s']:>7.2f} "
            f"{figures['normal_p95_s']:>7.2f} {figures['normal_max_s']:>7.2f} "
            f"{figures['heavy_done_when_normals_done']:>10.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--normal", type=int, default=30)
    parser.add_argument("--heavy", type=int, default=6)
    parser.add_argument("--interval", type=float, default=0.5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
