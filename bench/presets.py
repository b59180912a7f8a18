"""Per-core speed of each preset against the naive way (not a test).

    .venv/bin/python -m bench.presets [--sizes 0.3,12,24] [--seconds 4]

For each preset and input size, one process (one thread, so one core) renders the same
photo-like JPEG again and again through `worker.imaging.render`, the worker's own code path, and
the same job done the naive way (full decode, then `resize(LANCZOS)` / draw / save). It prints
images per CPU-second (the rate of one core, unaffected by other load on a shared machine; the
wall-clock rate is in the JSON of each run), the process's peak RSS for both, and their ratio.
Each measurement runs in a fresh process, so peak memory is that job's alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from core.processing.forms import resolve
from core.processing.outputs import Output
from core.processing.presets import BUILTIN_PRESETS
from tests.images import photo_like
from worker.imaging import EncoderSettings, RenderLimits, render

TEXT = "AI magic added!"
LIMITS = RenderLimits(max_pixels=100_000_000, max_frames=500, max_output_pixels=100_000_000)
# Width × height for each size in megapixels, 4:3 like most cameras.
SIZES = {0.3: (640, 480), 12: (4000, 3000), 24: (5664, 4248), 50: (8160, 6120)}


def _naive(preset: str, src: Path, dst: Path) -> None:
    """The job done the plain way: full decode, orientation, LANCZOS, default encoder settings."""
    with Image.open(src) as opened:
        image = ImageOps.exif_transpose(opened.convert("RGB"))
    if preset == "default":
        # The original worker's way: a converted copy, then drawing on it.
        ImageDraw.Draw(image).text((10, 10), TEXT, fill=(255, 0, 0), font=ImageFont.load_default(size=40))
        image.save(dst, "JPEG", quality=90)
    elif preset == "thumbnail":
        scale = min(256 / image.width, 256 / image.height)
        image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        ).save(dst, "JPEG", quality=90)
    elif preset == "web":
        scale = min(1920 / image.width, 1920 / image.height, 1)
        image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        ).save(dst, "JPEG", quality=85)
    elif preset == "avatar":
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image.crop((left, top, left + side, top + side)).resize((512, 512), Image.Resampling.LANCZOS).save(
            dst, "JPEG", quality=90
        )
    elif preset == "grayscale":
        image.convert("L").save(dst, "JPEG", quality=90)
    elif preset == "webp":
        image.save(dst, "WEBP", quality=90)  # Pillow's default effort, method 4


def _ours(preset: str, src: Path, dst: Path, encoder: EncoderSettings) -> Callable[[], None]:
    processing = resolve(preset=preset, ops=None, outputs=None, presets=BUILTIN_PRESETS, watermark_text=TEXT)
    outputs: list[tuple[Output, Path]] = [(processing.outputs[0], dst)]
    return lambda: render(src, outputs, limits=LIMITS, encoder=encoder)


def measure_one(preset: str, src: Path, way: str, seconds: float, webp_method: int) -> dict:
    """Runs in its own process: render repeatedly for `seconds`; images/s and peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as folder:
        dst = Path(folder) / "out"
        job = (
            _ours(preset, src, dst, EncoderSettings(webp_method=webp_method))
            if way == "ours"
            else lambda: _naive(preset, src, dst)
        )
        job()  # warm up: fonts, codecs
        count, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds or count < 3:
            job()
            count += 1
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        # VmHWM, not getrusage's ru_maxrss: the latter survives exec, so it would report the
        # parent's peak (which made the input) rather than this job's.
        peak_mb = _peak_rss_kb() / 1024
        # Images per CPU-second of this process: the rate one core gives, whatever else shares the
        # machine (waiting for a core is not counted). The wall-clock rate is kept beside it.
        return {
            "rate": count / cpu,
            "wall_rate": count / elapsed,
            "peak_mb": peak_mb,
            "output_bytes": dst.stat().st_size,
        }


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="0.3,12,24", help="megapixels, from: " + ", ".join(map(str, SIZES))
    )
    parser.add_argument("--presets", default=",".join(BUILTIN_PRESETS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--webp-method", type=int, default=0)
    parser.add_argument("--one", nargs=3, metavar=("PRESET", "INPUT", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        preset, src, way = args.one
        print(json.dumps(measure_one(preset, Path(src), way, args.seconds, args.webp_method)))
        return
    with tempfile.TemporaryDirectory() as folder:
        report(args, Path(folder))


def report(args: argparse.Namespace, folder: Path) -> None:
    print("| preset | input | ours (images/s/core) | naive (images/s/core) | ratio | peak RSS ours / naive |")
    print("|---|---|---|---|---|---|")
    for megapixels in (float(size) for size in args.sizes.split(",")):
        src = folder / f"{megapixels:g}mp.jpg"
        src.write_bytes(photo_like(*SIZES[megapixels]))
        for preset in args.presets.split(","):
            results = {}
            for way in ("ours", "naive"):
                command = [sys.executable, "-m", "bench.presets", "--one", preset, str(src), way]
                command += ["--seconds", str(args.seconds), "--webp-method", str(args.webp_method)]
                results[way] = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
            ours, naive = results["ours"], results["naive"]
            print(
                f"| {preset} | {megapixels:g} MP ({src.stat().st_size / 1e6:.1f} MB) | {ours['rate']:.1f} | "
                f"{naive['rate']:.1f} | {ours['rate'] / naive['rate']:.2f}× | "
                f"{ours['peak_mb']:.0f} / {naive['peak_mb']:.0f} MB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
