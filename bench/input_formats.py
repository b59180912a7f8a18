"""Per-core speed and peak memory of HEIC, AVIF and TIFF inputs, against the naive way (not a test).

    .venv/bin/python -m bench.input_formats [--runs 3] [--seconds 3]

For each input (a 12 MP photo-like picture encoded as an iPhone-like HEIC with a Display P3 profile, an
AVIF, an LZW TIFF) and each of the `thumbnail` and `web` presets, a fresh process (one thread of ours,
so one core) renders it again and again through `worker.imaging.render`, the worker's own code path,
and then the same job the naive way (Image.open with pi-heif's plugin as registered by default,
convert, exif_transpose, resize LANCZOS, save with Pillow's defaults; no colour management). It
prints images per CPU-second (all the process's threads counted, so decoder threads do not flatter
either way) and the process's peak RSS, each the median of `--runs` fresh processes. Last, the peak RSS
of a 24 MP HEIC through `thumbnail`.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from bench.presets import LIMITS, SIZES, _peak_rss_kb
from core.processing.forms import resolve
from core.processing.outputs import Output
from core.processing.presets import BUILTIN_PRESETS
from tests import input_formats
from tests.images import photo_like
from worker.imaging import EncoderSettings, render

PRESETS = ("thumbnail", "web")
FORMATS = ("heic", "avif", "tiff")
# What each preset's output is when the input is in each format (the worker's choice, which the
# naive way copies so that both write the same kind of file).
_NAIVE_OUTPUT = {"heic": "JPEG", "avif": "AVIF", "tiff": "JPEG"}


def make_input(fmt: str, size: tuple[int, int]) -> bytes:
    with Image.open(io.BytesIO(photo_like(*size))) as decoded:
        picture = decoded.convert("RGB")
    if fmt == "heic":
        return input_formats.heic(picture, quality=80, icc_profile=input_formats.display_p3_profile())
    if fmt == "avif":
        return input_formats.avif(picture)
    return input_formats.tiff(picture, compression="tiff_lzw")


def _naive(preset: str, fmt: str, src: Path, dst: Path) -> None:
    with Image.open(src) as opened:
        image = ImageOps.exif_transpose(opened.convert("RGB"))
    box = 256 if preset == "thumbnail" else 1920
    scale = min(box / image.width, box / image.height, 1)
    small = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    if preset == "web":
        small.save(dst, "JPEG", quality=85)
    else:
        small.save(dst, _NAIVE_OUTPUT[fmt])


def _ours(preset: str, src: Path, dst: Path) -> Callable[[], None]:
    processing = resolve(preset=preset, ops=None, outputs=None, presets=BUILTIN_PRESETS, watermark_text="x")
    outputs: list[tuple[Output, Path]] = [(processing.outputs[0], dst)]
    return lambda: render(src, outputs, limits=LIMITS, encoder=EncoderSettings())


def measure_one(preset: str, fmt: str, src: Path, way: str, seconds: float) -> dict[str, float]:
    """Runs in its own process: render repeatedly for `seconds` (3 images at least)."""
    if way == "naive":
        import pi_heif  # the worker's decoder, as a naive user would register it

        pi_heif.register_heif_opener()
    with tempfile.TemporaryDirectory() as folder:
        dst = Path(folder) / "out"
        job = _ours(preset, src, dst) if way == "ours" else lambda: _naive(preset, fmt, src, dst)
        job()  # warm up: codecs, profiles
        count, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds or count < 3:
            job()
            count += 1
        cpu = time.process_time() - cpu_started
        return {"rate": count / cpu, "ms": 1000 * cpu / count, "peak_mb": _peak_rss_kb() / 1024}


def _run(preset: str, fmt: str, src: Path, way: str, seconds: float, runs: int) -> dict[str, float]:
    results = []
    for _ in range(runs):
        command = [sys.executable, "-m", "bench.input_formats", "--one", preset, fmt, str(src), way]
        command += ["--seconds", str(seconds)]
        results.append(json.loads(subprocess.run(command, check=True, capture_output=True).stdout))
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--one", nargs=4, metavar=("PRESET", "FORMAT", "INPUT", "WAY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        preset, fmt, src, way = args.one
        print(json.dumps(measure_one(preset, fmt, Path(src), way, args.seconds)))
        return
    with tempfile.TemporaryDirectory() as folder:
        report(args, Path(folder))


def report(args: argparse.Namespace, folder: Path) -> None:
    print(f"medians of {args.runs} fresh processes each")
    print("| input | preset | ours (ms/image/core) | naive (ms/image/core) | ratio | peak RSS ours / naive |")
    print("|---|---|---|---|---|---|")
    for fmt in FORMATS:
        src = folder / f"12mp.{fmt}"
        src.write_bytes(make_input(fmt, SIZES[12]))
        for preset in PRESETS:
            ours = _run(preset, fmt, src, "ours", args.seconds, args.runs)
            naive = _run(preset, fmt, src, "naive", args.seconds, args.runs)
            print(
                f"| 12 MP {fmt.upper()} ({src.stat().st_size / 1e6:.1f} MB) | {preset} | {ours['ms']:.0f} | "
                f"{naive['ms']:.0f} | {naive['ms'] / ours['ms']:.2f}× faster | "
                f"{ours['peak_mb']:.0f} / {naive['peak_mb']:.0f} MB |",
                flush=True,
            )
    src = folder / "24mp.heic"
    src.write_bytes(make_input("heic", SIZES[24]))
    ours = _run("thumbnail", "heic", src, "ours", args.seconds, args.runs)
    naive = _run("thumbnail", "heic", src, "naive", args.seconds, args.runs)
    size_mb = src.stat().st_size / 1e6
    print(
        f"| 24 MP HEIC ({size_mb:.1f} MB) | thumbnail | {ours['ms']:.0f} | {naive['ms']:.0f} | "
        f"{naive['ms'] / ours['ms']:.2f}× faster | {ours['peak_mb']:.0f} / {naive['peak_mb']:.0f} MB |",
        flush=True,
    )


if __name__ == "__main__":
    main()
