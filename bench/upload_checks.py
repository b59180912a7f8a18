"""What the upload-time cost checks add to each upload, in CPU time (not a test).

    .venv/bin/python -m bench.upload_checks

- the render cost estimate (core.processing.cost), for the default preset and for the largest
  request the form allows (8 outputs of 20 operations, rotations at odd angles), beside what
  resolving that form costs already;
- the progressive JPEG scan count (core.image_structure.check_jpeg_scans) on a 12 MP photo, baseline
  and progressive (only progressive JPEGs are searched past their frame header).
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from PIL import Image

from core.image_structure import check_jpeg_scans
from core.processing.cost import cost_refusal, output_frames
from core.processing.forms import resolve
from core.processing.outputs import Processing
from core.processing.presets import BUILTIN_PRESETS
from tests.images import photo_like

LIMIT = 50_000_000
LARGEST_OPS = [
    {"op": "rotate", "degrees": 33},
    {"op": "crop", "aspect": "16:9"},
    {"op": "resize", "width": 800},
    {"op": "blur"},
    {"op": "watermark", "size": 40},
] * 4


def per_call(function: Callable[[], object], seconds: float = 1.0) -> float:
    """Mean CPU seconds of one call, over about `seconds`."""
    calls = 0
    started = time.process_time()
    while time.process_time() - started < seconds:
        function()
        calls += 1
    return (time.process_time() - started) / calls


def estimate(processing: Processing) -> None:
    for output in processing.outputs:
        cost_refusal(output, 4000, 3000, output_frames(output, "JPEG", 1), limit=LIMIT)


def main() -> None:
    default = resolve(preset=None, ops=None, outputs=None, presets=BUILTIN_PRESETS, watermark_text="x")
    form = json.dumps({f"o{index}": LARGEST_OPS for index in range(8)})

    def resolve_largest() -> Processing:
        return resolve(preset=None, ops=None, outputs=form, presets=BUILTIN_PRESETS, watermark_text="x")

    largest = resolve_largest()
    print(f"cost estimate, default preset:        {per_call(lambda: estimate(default)) * 1e6:8.1f} µs")
    print(f"cost estimate, 8 outputs × 20 ops:    {per_call(lambda: estimate(largest)) * 1e6:8.1f} µs")
    print(f"resolving that form (for comparison): {per_call(resolve_largest) * 1e6:8.1f} µs")
    photo = Image.open(io.BytesIO(photo_like(4000, 3000)))
    with tempfile.TemporaryDirectory() as folder:
        for progressive in (False, True):
            path = Path(folder) / f"photo-{progressive}.jpg"
            photo.save(path, quality=92, progressive=progressive)
            with open(path, "rb") as file:
                seconds = per_call(partial(check_jpeg_scans, file))
            kind = "progressive" if progressive else "baseline"
            size = path.stat().st_size / 1e6
            print(f"JPEG scan count, 12 MP {kind:<11} ({size:.1f} MB): {seconds * 1e6:8.1f} µs")


if __name__ == "__main__":
    main()
