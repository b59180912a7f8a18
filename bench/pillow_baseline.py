"""Pillow's own time for an image: the worker's render function called in a plain loop.

This is the yardstick for the queue's overhead and the drain's efficiency, so it must be the very
function the worker calls, imported the way the worker imports it. Its keyword arguments are filled
from the settings by name; if the function grows a required argument this module does not know, the
suite stops and says so rather than timing something else.
"""

from __future__ import annotations

import inspect
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from config import get_settings
from core.formats import configure_pillow
from core.storage import move_into_place
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


def bare_loop(
    src: Path, workdir: Path, *, count: int, max_seconds: float, durable: bool = False
) -> dict[str, float]:
    """Render `src` up to `count` times in this thread, no queue or database: rate and median time.

    `durable`: write each output as the worker must before it records `done` (a new temporary
    file, synced, renamed into place, the folder synced: core.storage.move_into_place), instead of
    overwriting one file. The difference is what durability alone costs.
    """
    render = render_function()
    folder = workdir / "bare-loop"
    folder.mkdir(exist_ok=True)
    dst = folder / "output"

    def once() -> None:
        if not durable:
            render(src, dst)
            return
        temp = folder / f".partial-{uuid.uuid4().hex}"
        render(src, temp)
        move_into_place(temp, dst)

    once()  # warm-up: fonts, codecs, page cache
    times: list[float] = []
    deadline = time.monotonic() + max_seconds
    started = time.perf_counter()
    while len(times) < count and time.monotonic() < deadline:
        one = time.perf_counter()
        once()
        times.append(time.perf_counter() - one)
    elapsed = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "images": len(times),
        "rate": len(times) / elapsed,
        "median_ms": statistics.median(times) * 1000,
        "min_ms": min(times) * 1000,
    }
