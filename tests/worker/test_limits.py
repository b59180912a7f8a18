"""Outputs the worker refuses or works around: over the pixel limit, or refused by the encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.formats import ImageRejected
from tests import images
from tests.worker.rendering import BLUE, LIMITS, processing, render_all, run, save, sideways_jpeg
from worker.imaging import OUTPUT_TOO_LARGE, RenderLimits

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
    assert message == OUTPUT_TOO_LARGE.format(name="poster", width=1000, height=800, limit=500_000)
    assert message == "Output 'poster' would be 1,000×800 pixels; the limit is 500,000 pixels."


def test_the_output_limit_uses_the_oriented_size(tmp_path: Path) -> None:
    # Stored 300×100, upright 100×300: a crop 100 wide and 300 tall fits only once turned.
    src = sideways_jpeg(tmp_path / "in.jpg", (300, 100))
    chosen = processing(ops=[{"op": "crop", "left": 0, "top": 0, "width": 100, "height": 300}])
    limits = RenderLimits(
        max_pixels=LIMITS.max_pixels, max_frames=LIMITS.max_frames, max_output_pixels=30_000
    )

    ((result, _),) = render_all(src, chosen, tmp_path, limits=limits)

    assert (result.width, result.height) == (100, 300)


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
    # JPEG cannot hold a side over 65,535 pixels: the encoder refuses every time.
    src = save(Image.new("RGB", (70_000, 2), "white"), tmp_path / "wide.png")

    with pytest.raises(ImageRejected, match=r"^The result could not be written as JPEG \("):
        run(src, tmp_path, {"op": "format", "format": "jpeg"})
