"""Pillow's own time for an image: the worker's render function called in a plain loop.

This is the yardstick for the queue's overhead and the drain's efficiency, so it must be the very
function the worker calls, imported the way the worker imports it. Its keyword arguments are filled
from the settings by name; if the function grows a required argument this module does not know, the
suite stops and says so rather than timing something else.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from config import get_settings
from core.formats import configure_pillow
from worker.imaging import watermark


def render_function() -> Callable[[Path, Path], object]:
    settings = get_settings()
    configure_pillow(settings.max_image_pixels)  # as the worker's main() does
    known = {
        "text": settings.watermark_text,
        "max_pixels": settings.max_image_pixels,
        "max_frames": settings.max_frames,
    }
    parameters = inspect.signature(watermark).parameters
    kwargs = {name: value for name, value in known.items() if name in parameters}
    missing = [
        name
        for name, parameter in list(parameters.items())[2:]
        if parameter.default is inspect.Parameter.empty and name not in kwargs
    ]
    if missing:
        raise RuntimeError(
            f"worker.imaging.watermark now requires {missing}: teach bench/pillow_baseline.py to pass them"
        )
    return lambda src, dst: watermark(src, dst, **kwargs)


def bare_loop(src: Path, workdir: Path, *, count: int, max_seconds: float) -> dict[str, float]:
    """Render `src` up to `count` times in this thread, no queue or database: rate and median time."""
    render = render_function()
    dst = workdir / "bare-loop-output"
    render(src, dst)  # warm-up: fonts, codecs, page cache
    times: list[float] = []
    deadline = time.monotonic() + max_seconds
    started = time.perf_counter()
    while len(times) < count and time.monotonic() < deadline:
        one = time.perf_counter()
        render(src, dst)
        times.append(time.perf_counter() - one)
    elapsed = time.perf_counter() - started
    dst.unlink(missing_ok=True)
    return {
        "images": len(times),
        "rate": len(times) / elapsed,
        "median_ms": statistics.median(times) * 1000,
        "min_ms": min(times) * 1000,
    }
