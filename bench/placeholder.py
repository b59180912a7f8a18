"""What the placeholder costs (not a test): the `thumbnail` preset's per-core time on a 12 MP
photo-like JPEG through `worker.imaging.render`, with the placeholder taken and without.

    .venv/bin/python -m bench.placeholder [--rounds 9] [--renders 20]

One thread, CPU time (time.process_time, so other load on a shared machine slows the clock less
than the wall), the two ways taking turns within each round so that a change in that load
falls on both. Prints the median per-render time of each way over the rounds, the placeholder's
own time on the frame the render decoded, and the added share.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from core.processing.outputs import Output
from core.processing.presets import BUILTIN_PRESETS
from tests.images import photo_like
from worker.imaging import RenderLimits, render
from worker.placeholder import Placeholder, make_placeholder

LIMITS = RenderLimits(max_pixels=100_000_000, max_frames=500, max_output_pixels=100_000_000)
SIZE = (4000, 3000)


def _cpu_per_call(call: Callable[[], object], count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--renders", type=int, default=20, help="renders of each way per round")
    args = parser.parse_args()

    output = Output(name="image", ops=BUILTIN_PRESETS["thumbnail"].ops, preset="thumbnail")
    with tempfile.TemporaryDirectory() as scratch:
        src = Path(scratch) / "photo.jpg"
        src.write_bytes(photo_like(*SIZE))
        dst = Path(scratch) / "out"
        kept: list[Placeholder] = []

        def without() -> None:
            render(src, [(output, dst)], limits=LIMITS)

        def with_placeholder() -> None:
            render(src, [(output, dst)], limits=LIMITS, report=kept.append)
            kept.clear()

        # The frame the thumbnail's render decodes (a 1/8 draft), for the placeholder's own time.
        with Image.open(src) as image:
            image.draft("RGB", (SIZE[0] // 8, SIZE[1] // 8))
            frame = image.convert("RGB")

        without()
        with_placeholder()  # warm both paths (imports, caches)
        plain, placed, alone = [], [], []
        for round_ in range(args.rounds):
            # Each way goes first in every other round: neither always meets a colder cache.
            ways = [(plain, without), (placed, with_placeholder)]
            for times, way in ways if round_ % 2 == 0 else reversed(ways):
                times.append(_cpu_per_call(way, args.renders))
            alone.append(_cpu_per_call(lambda: make_placeholder(frame, *SIZE), args.renders))

    base, extra = statistics.median(plain), statistics.median(placed)
    ms = 1000
    print(f"thumbnail preset, {SIZE[0]}×{SIZE[1]} photo-like JPEG, one core,", end=" ")
    print(f"{args.rounds} rounds of {args.renders} renders each way")
    for name, value, times in (("without placeholder", base, plain), ("with placeholder", extra, placed)):
        spread = f"rounds {min(times) * ms:.2f}-{max(times) * ms:.2f}"
        print(f"  {name + ':':21} {value * ms:6.2f} ms per render (median; {spread})")
    print(f"  placeholder alone, {frame.width}×{frame.height} draft: {statistics.median(alone) * ms:.2f} ms")
    print(f"  added: {(extra / base - 1) * 100:+.1f} % (the budget: 5 %)")


if __name__ == "__main__":
    main()
