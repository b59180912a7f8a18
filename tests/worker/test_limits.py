"""Outputs the worker refuses or works around: over the pixel limit, or refused by the encoder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.formats import ImageRejected
from core.processing.cost import STEP_TOO_LARGE as STEP_TOO_LARGE_AT
from core.processing.cost import STEP_TOO_LARGE_IN_ALL
from tests import images
from tests.worker.rendering import BLUE, LIMITS, WHITE, processing, render_all, run, save, sideways_jpeg
from worker.imaging import OUTPUT_TOO_COSTLY, STEP_TOO_LARGE, RenderLimits

# output limit


def test_an_output_over_the_pixel_limit_is_rejected_by_name(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 100), BLUE), tmp_path / "in.png")
    chosen = processing(
        outputs={
            "fine": [{"op": "resize", "width": 500, "height": 500, "mode": "exact"}],
            "poster": [{"op": "resize", "width": 1000, "height": 800, "mode": "exact"}],
        }
    )
    limits = RenderLimits(
        max_pixels=LIMITS.max_pixels, max_frames=LIMITS.max_frames, max_output_pixels=500_000
    )

    with pytest.raises(ImageRejected) as raised:
        render_all(src, chosen, tmp_path, limits=limits)

    message = str(raised.value)
    reason = STEP_TOO_LARGE_AT.format(index=0, op="resize", width=1000, height=800, limit=500_000)
    assert message == OUTPUT_TOO_COSTLY.format(name="poster", reason=reason)
    assert message == (
        "Output 'poster': [0] resize makes 1,000×800 pixels; the limit is 500,000 pixels (MAX_OUTPUT_PIXELS)."
    )


def test_the_output_limit_uses_the_oriented_size(tmp_path: Path) -> None:
    # Stored 300×100, upright 100×300: a crop 100 wide and 300 tall fits only once turned.
    src = sideways_jpeg(tmp_path / "in.jpg", (300, 100))
    chosen = processing(ops=[{"op": "crop", "left": 0, "top": 0, "width": 100, "height": 300}])
    limits = RenderLimits(
        max_pixels=LIMITS.max_pixels, max_frames=LIMITS.max_frames, max_output_pixels=30_000
    )

    ((result, _),) = render_all(src, chosen, tmp_path, limits=limits)

    assert (result.width, result.height) == (100, 300)


# Every step and every frame (the API checks the same; these rows bypass it)

# Measured before the check: this render grew a worker's RSS by over 1 GB.
ENLARGE_AND_BACK = [
    {"op": "resize", "width": 16384, "height": 16384, "mode": "exact"},
    {"op": "resize", "width": 64, "height": 64, "mode": "exact"},
]
_RENDER_IN_A_CHILD = """
import sys
from pathlib import Path
from core.formats import ImageRejected
from tests.worker.rendering import LIMITS, processing, render_all
try:
    render_all(Path(sys.argv[1]), processing(ops=%r), Path(sys.argv[2]), limits=LIMITS)
    print("rendered")
except ImageRejected as exc:
    print(exc)
# VmHWM: this process's own peak (ru_maxrss would include the parent's, from before the exec).
status = Path("/proc/self/status").read_text()
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)
"""


def test_an_enlargement_shrunk_back_is_rejected_before_it_costs_memory(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (1, 1), BLUE), tmp_path / "in.png")

    # In a child process, to measure its peak memory alone.
    done = subprocess.run(
        [sys.executable, "-c", _RENDER_IN_A_CHILD % ENLARGE_AND_BACK, str(src), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )

    message, peak_mib = done.stdout.splitlines()
    reason = STEP_TOO_LARGE_AT.format(index=0, op="resize", width=16384, height=16384, limit=50_000_000)
    assert message == OUTPUT_TOO_COSTLY.format(name="image", reason=reason)
    assert int(peak_mib) < 200, "rejected before any large image was made"


def test_every_frame_of_an_animation_counts(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (1, 1), colour) for colour in (BLUE, WHITE) * 4]
    src = save(frames[0], tmp_path / "in.gif", save_all=True, append_images=frames[1:], duration=50)
    ops = [{"op": "resize", "width": 2000, "height": 2000, "mode": "exact"}]
    limits = RenderLimits(
        max_pixels=LIMITS.max_pixels, max_frames=LIMITS.max_frames, max_output_pixels=20_000_000
    )

    with pytest.raises(ImageRejected) as raised:
        render_all(src, processing(ops=ops), tmp_path, limits=limits)

    reason = STEP_TOO_LARGE_IN_ALL.format(
        index=0, op="resize", width=2000, height=2000, frames=8, total=32_000_000, limit=20_000_000
    )
    assert str(raised.value) == OUTPUT_TOO_COSTLY.format(name="image", reason=reason)
    # The first frame alone (a JPEG keeps no more) is within the limit.
    ((result, _),) = render_all(
        src, processing(ops=[*ops, {"op": "format", "format": "jpeg"}]), tmp_path, limits=limits
    )
    assert (result.frames, result.width) == (1, 2000)


def test_pillows_own_refusal_of_a_step_is_a_rejection_in_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What configure_pillow does in a worker with MAX_IMAGE_PIXELS=1,000,000: Pillow then refuses
    # to draw a text image over 2,000,000 pixels (DecompressionBombError), which no retry changes.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    src = save(Image.new("RGB", (400, 300), BLUE), tmp_path / "in.png")
    ops = [{"op": "grayscale"}, {"op": "watermark", "text": "W" * 20, "size": 400}]

    with pytest.raises(ImageRejected) as raised:
        render_all(src, processing(ops=ops), tmp_path)

    assert str(raised.value) == STEP_TOO_LARGE.format(
        name="image", index=1, op="watermark", pixels=2_110_740, limit=2_000_000
    )


# Encoders that refuse


def test_a_webp_partition_overflow_falls_back_to_a_slower_method(tmp_path: Path) -> None:
    # At quality 90, libwebp's fastest methods cannot fit a busy 24 MP photo's headers into the
    # format's first partition ("encoding error 6"); method 2 can.
    src = tmp_path / "in.jpg"
    src.write_bytes(images.photo_like(5664, 4248))
    with Image.open(src) as decoded, pytest.raises(ValueError, match="encoding error 6"):
        decoded.save(tmp_path / "plain.webp", quality=90, method=0)  # the failure being worked around

    result, out = run(src, tmp_path, {"op": "format", "format": "webp", "quality": 90})

    assert (result.format, out.size) == ("WEBP", (5664, 4248))


def test_an_encoder_that_refuses_the_picture_is_a_rejection_not_a_retry(tmp_path: Path) -> None:
    # JPEG cannot hold a side over 65,500 pixels: the encoder refuses every time (checked before
    # encoding, to say why: tests/worker/test_output_formats.py).
    src = save(Image.new("RGB", (70_000, 2), "white"), tmp_path / "wide.png")

    with pytest.raises(ImageRejected, match=r"^The result is 70,000×2 pixels; JPEG holds at most "):
        run(src, tmp_path, {"op": "format", "format": "jpeg"})
