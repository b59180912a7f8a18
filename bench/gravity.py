"""What `gravity: "smart"` costs beside `center` for the same output, per core (not a test).

    .venv/bin/python -m bench.gravity [--rounds 7] [--repeats 3]

A 12 MP photo-like JPEG (bench/images.py) with a subject off-centre is rendered through
`worker.imaging.render`, the worker's own path, by one thread: each case once with the default
(centre) gravity and once with `smart`, alternately, `repeats` renders of each per round. It prints
the median CPU time of one render over the rounds for both and their ratio. CPU time of this
process, not wall time: the rate one core gives, whatever else shares the machine (waiting for a
core is not counted; caches and memory bandwidth shared with other load still are).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bench.images import LARGE_GRAIN, photo
from core.processing.operations import OPS
from core.processing.outputs import Output
from worker.imaging import RenderLimits, render

LIMITS = RenderLimits(max_pixels=100_000_000, max_frames=1, max_output_pixels=100_000_000)
SIZE = (4000, 3000)
# The same output each way; only the gravity differs. `avatar` and `fill` decode a reduced JPEG
# (draft), `banner` crops the full-size picture and encodes 12 MP less the sides.
CASES: dict[str, list[dict[str, Any]]] = {
    "avatar (crop 1:1, resize 512)": [
        {"op": "crop", "aspect": "1:1"},
        {"op": "resize", "width": 512, "height": 512, "mode": "exact"},
    ],
    "fill 800×800": [{"op": "resize", "width": 800, "height": 800, "mode": "fill"}],
    "banner (crop 3:1, full size)": [{"op": "crop", "aspect": "3:1"}],
}


def subject_photo() -> bytes:
    """The photo with a face-like subject (skin tone and detail) in its right third."""
    image = photo(*SIZE, grain=LARGE_GRAIN)
    draw = ImageDraw.Draw(image)
    draw.ellipse((2900, 900, 3600, 1800), fill=(224, 172, 140))
    for x in range(2950, 3550, 60):
        draw.line((x, 1200, x + 40, 1230), fill=(90, 50, 40), width=12)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _with_gravity(ops: list[dict[str, Any]], gravity: str | None) -> Output:
    placed = [
        {**op, "gravity": gravity} if gravity and (op.get("aspect") or op.get("mode") == "fill") else op
        for op in ops
    ]
    return Output(name="image", ops=tuple(OPS.validate_python(placed)))


def _cpu_seconds(src: Path, output: Output, dst: Path, repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        render(src, [(output, dst)], limits=LIMITS)
    return (time.process_time() - started) / repeats


def measure(rounds: int, repeats: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "photo.jpg", Path(folder) / "out"
        src.write_bytes(subject_photo())
        for name, ops in CASES.items():
            centre, smart = _with_gravity(ops, None), _with_gravity(ops, "smart")
            render(src, [(smart, dst)], limits=LIMITS)  # warm up
            with Image.open(dst) as made:
                size = made.size
            times: dict[str, list[float]] = {"center": [], "smart": []}
            for _ in range(rounds):
                times["center"].append(_cpu_seconds(src, centre, dst, repeats))
                times["smart"].append(_cpu_seconds(src, smart, dst, repeats))
            center_ms = statistics.median(times["center"]) * 1000
            smart_ms = statistics.median(times["smart"]) * 1000
            results[name] = {
                "output": f"{size[0]}×{size[1]}",
                "center_ms": round(center_ms, 1),
                "smart_ms": round(smart_ms, 1),
                "overhead_percent": round((smart_ms / center_ms - 1) * 100, 1),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = measure(args.rounds, args.repeats)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(f"12 MP JPEG ({SIZE[0]}×{SIZE[1]}), median CPU ms per render over {args.rounds} rounds")
    print(f"{'case':34} {'output':>10} {'center':>8} {'smart':>8} {'overhead':>9}")
    for name, row in results.items():
        print(
            f"{name:34} {row['output']:>10} {row['center_ms']:>8} {row['smart_ms']:>8} "
            f"{row['overhead_percent']:>8}%"
        )


if __name__ == "__main__":
    main()
