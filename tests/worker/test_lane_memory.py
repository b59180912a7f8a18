"""The worker's light renders at once fit the memory its shipped deployment gives it, urgent lane
included: deploy/k8s's WORKER_CONCURRENCY regular lanes each at the largest light render
(HEAVY_RENDER_PIXELS), and WORKER_URGENT_LANES urgent lanes each at the largest render they take
(worker.consumer.URGENT_RENDER_SHARE of it), against worker.yaml's memory limit.

Measured as the other memory bounds are (tests/worker/test_limits.py, BENCHMARKS.md "Memory"): a
render's peak RSS (VmHWM) in a child process of its own, over its RSS before, here for the render
that holds the most memory per pixel-step of those measured (a blur keeps the decoded picture and
its blurred copy: 3.8 bytes a pixel-step). The sum assumes every lane at its peak at the same
moment, which no timing can exceed. The heavy lane (one render at a time, in a process of its own)
is beside these as before: the urgent lane never takes a heavy render.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

from core.processing.cost import render_pixels
from tests.worker.rendering import processing
from worker.consumer import URGENT_RENDER_SHARE

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BLUR = [{"op": "blur", "radius": 1}]
MIB = 1024 * 1024

# In a fresh interpreter with the worker's own modules loaded: its RSS, then the peak of one render.
_PEAK_OF_A_RENDER = """
import json, sys
from pathlib import Path
import worker.__main__  # what a worker process holds before its first render
from tests.worker.rendering import processing, render_all

def rss(field):
    return int(Path("/proc/self/status").read_text().split(field + ":")[1].split()[0]) * 1024

before = rss("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
if sys.argv[1] != "-":
    render_all(Path(sys.argv[1]), processing(ops=json.loads(sys.argv[2])), Path(sys.argv[3]))
print(json.dumps({"before": before, "peak": rss("VmHWM")}))
"""


def _shipped() -> tuple[dict[str, str], int]:
    """The worker's settings in deploy/k8s, and its container's memory limit in bytes."""
    settings = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    worker = yaml.safe_load((K8S / "worker.yaml").read_text())
    [container] = worker["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") or limit.endswith("Mi"), limit
    return settings, int(float(limit[:-2]) * (1024 if limit.endswith("Gi") else 1) * MIB)


def _largest_blur(pixel_steps: int, tmp_path: Path) -> Path:
    """A JPEG whose blur costs at most `pixel_steps` by render_pixels, as near it as a 4:3 size
    gets: the largest such render of that kind."""
    per_pixel = render_pixels(processing(ops=BLUR), 1000, 1000, 1, "JPEG") / 1_000_000
    height = math.isqrt(int(pixel_steps / per_pixel * 3 / 4))
    width = height * 4 // 3
    assert render_pixels(processing(ops=BLUR), width, height, 1, "JPEG") <= pixel_steps
    path = tmp_path / f"{width}x{height}.jpg"
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(path, quality=75)
    return path


def _peak(source: Path | None, tmp_path: Path) -> tuple[int, int]:
    """(RSS before, peak RSS) of a fresh process with the worker's modules rendering `source`."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_A_RENDER, str(source or "-"), json.dumps(BLUR), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    measured = json.loads(done.stdout.splitlines()[-1])
    return measured["before"], measured["peak"]


def test_every_light_lane_at_its_largest_render_fits_the_shipped_workers_memory_limit(tmp_path: Path) -> None:
    settings, limit = _shipped()
    assert settings["WORKER_POOL"] == "threads", (
        "a pooled child process would add its own RSS and block cache"
    )
    regular, urgent = int(settings["WORKER_CONCURRENCY"]), int(settings["WORKER_URGENT_LANES"])
    heavy = int(settings["HEAVY_RENDER_PIXELS"])

    base, _ = _peak(None, tmp_path)
    before, peak = _peak(_largest_blur(heavy, tmp_path), tmp_path)
    light = peak - before
    before, peak = _peak(_largest_blur(int(heavy * URGENT_RENDER_SHARE), tmp_path), tmp_path)
    in_urgent_lane = peak - before

    worst = base + regular * light + urgent * in_urgent_lane
    figures = (
        f"worker {base / MIB:.0f} MiB + {regular} x {light / MIB:.0f} + {urgent} x {in_urgent_lane / MIB:.0f}"
        f" = {worst / MIB:.0f} MiB against {limit / MIB:.0f} MiB"
    )
    print(figures)
    assert urgent >= 1, "the shipped worker has an urgent lane"
    # Without URGENT_RENDER_SHARE (an urgent lane taking any light render) it was 93 + 3 x 382 =
    # 1,239 MiB on the machine of BENCHMARKS.md: over the limit.
    assert worst < limit, figures
