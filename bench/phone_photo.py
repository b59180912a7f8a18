"""A phone's 12 MP photo through the default processing: what each step costs, and the sRGB
conversion in place against into a new frame (issue 20; BENCHMARKS.md, "12 MP photos end to end").

    .venv/bin/python -m bench.phone_photo [--rounds 5] [--renders 4]

The photo: bench.images' 4000 × 3000 photo as a quality-95 JPEG with a Display P3 profile and EXIF
orientation 6, as phones send them. Each render runs in a thread of its own, as the worker's pool
runs it; CPU time from getrusage (user + system), the two ways in turns, medians of the rounds.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image

from bench.images import photo
from core.formats import configure_pillow
from core.processing.operations import OPS
from core.processing.outputs import Output
from core.tracing import recording_steps
from tests.input_formats import display_p3_profile
from worker import imaging

SIZE = (4000, 3000)
OUTPUT = Output(
    name="image",
    ops=tuple(OPS.validate_python([{"op": "watermark", "text": "AI magic added!"}])),
    preset="default",
)
LIMITS = imaging.RenderLimits(max_pixels=100_000_000, max_frames=100, max_output_pixels=100_000_000)


def phone_jpeg() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    photo(*SIZE, grain=6).save(buffer, "JPEG", quality=95, icc_profile=display_p3_profile(), exif=exif)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--renders", type=int, default=4, help="renders a round, each way")
    args = parser.parse_args()
    configure_pillow(LIMITS.max_pixels)
    with tempfile.TemporaryDirectory(prefix="phone-photo-") as folder:
        src, dst = Path(folder) / "phone.jpg", Path(folder) / "out"
        src.write_bytes(phone_jpeg())
        as_shipped = imaging._in_srgb

        def into_a_new_frame(source: Any, frame: Image.Image, *, in_place: bool = False) -> Image.Image:
            return as_shipped(source, frame, in_place=False)

        def render() -> list[Any]:
            with recording_steps(True) as recorder:
                imaging.render(src, [(OUTPUT, dst)], limits=LIMITS, report=lambda _: None)
            return recorder.recorded() if recorder is not None else []

        pool = ThreadPoolExecutor(1)
        pool.submit(render).result()  # fonts, LittleCMS and the codecs loaded once
        cpu: dict[str, list[float]] = {"into a new frame": [], "in place": []}
        steps: dict[str, list[float]] = {}
        for round_ in range(args.rounds):
            ways = list(cpu) if round_ % 2 else list(cpu)[::-1]
            for way in ways:
                imaging._in_srgb = as_shipped if way == "in place" else into_a_new_frame  # type: ignore[assignment]
                before = resource.getrusage(resource.RUSAGE_SELF)
                for _ in range(args.renders):
                    recorded = pool.submit(render).result()
                    if way == "in place":
                        for done in recorded:
                            steps.setdefault(done.name, []).append((done.end_ns - done.start_ns) / 1e6)
                after = resource.getrusage(resource.RUSAGE_SELF)
                used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                cpu[way].append(used * 1000 / args.renders)
        imaging._in_srgb = as_shipped
        pool.shutdown()
        print(f"input {src.stat().st_size:,} bytes; load average {os.getloadavg()}")
    for way, values in cpu.items():
        each = ", ".join(f"{value:.0f}" for value in values)
        print(f"{way:17} {statistics.median(values):6.1f} ms of CPU a render ({each})")
    ratio = statistics.median(cpu["in place"]) / statistics.median(cpu["into a new frame"])
    print(f"in place / into a new frame: {ratio:.2f}")
    print(
        "steps in place, wall ms (median): "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in steps.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
