"""The format op: every output format, its quality, and what becomes of alpha."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.formats import ImageRejected
from core.processing.operations import OUTPUT_FORMATS
from tests.worker.rendering import BLUE, GREEN, PILLOW_FORMAT, RED, WHITE, bands, close, pixel, run, save
from worker.imaging import TOO_LARGE_FOR_FORMAT


def _quality_sizes(src: Path, tmp_path: Path, fmt: str) -> list[int]:
    return [
        run(src, tmp_path, {"op": "format", "format": fmt, "quality": quality})[0].size_bytes
        for quality in (20, 95)
    ]


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_format_writes_that_format(tmp_path: Path, fmt: str) -> None:
    image = bands((96, 64), [RED, GREEN, BLUE], [32, 32, 32])
    src = save(image, tmp_path / "in.bmp")

    result, out = run(src, tmp_path, {"op": "format", "format": fmt})

    assert (result.format, out.format) == (PILLOW_FORMAT[fmt], PILLOW_FORMAT[fmt])
    assert (result.width, result.height, result.frames) == (96, 64, 1)
    assert result.size_bytes == (tmp_path / "out-image").stat().st_size
    tolerance = 0 if fmt == "png" else 40
    for x, colour in ((16, RED), (48, GREEN), (80, BLUE)):
        assert close(pixel(out.convert("RGB"), (x, 32)), colour, tolerance)


@pytest.mark.parametrize("fmt", [fmt for fmt in OUTPUT_FORMATS if fmt != "png"])
def test_format_quality_changes_the_size(tmp_path: Path, fmt: str) -> None:
    noisy = Image.effect_noise((128, 96), 60).convert("RGB")
    src = save(noisy, tmp_path / "in.png")

    low, high = _quality_sizes(src, tmp_path, fmt)

    assert low * 1.5 < high


def test_rgba_to_jpeg_is_flattened_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (90, 30), (0, 0, 0, 0))
    image.paste((*RED, 255), (30, 0, 60, 30))
    image.paste((0, 0, 0, 128), (60, 0, 90, 30))
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "format", "format": "jpeg", "quality": 95})

    assert (result.format, out.mode) == ("JPEG", "RGB")
    assert close(pixel(out, (15, 15)), WHITE, 3)
    assert close(pixel(out, (45, 15)), RED, 8)
    assert close(pixel(out, (75, 15)), (127, 127, 127), 4)


@pytest.mark.parametrize("fmt", [fmt for fmt in OUTPUT_FORMATS if fmt != "jpeg"])
def test_alpha_survives_formats_that_have_it(tmp_path: Path, fmt: str) -> None:
    image = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    image.paste((*RED, 255), (32, 0, 64, 32))
    src = save(image, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "format", "format": fmt})

    assert out.mode == "RGBA"
    assert pixel(out, (8, 16))[3] == 0
    assert close(pixel(out, (48, 16)), (*RED, 255), 30)


def test_without_format_the_input_format_is_kept(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (64, 48), BLUE), tmp_path / "in", format="WEBP")
    result, out = run(src, tmp_path, {"op": "resize", "width": 32})
    assert (result.format, out.format, out.size) == ("WEBP", "WEBP", (32, 24))


@pytest.mark.parametrize(("fmt", "limit"), [("jpeg", 65_500), ("webp", 16_383), ("avif", 65_536)])
def test_a_picture_too_wide_for_its_format_fails_saying_so(tmp_path: Path, fmt: str, limit: int) -> None:
    # A long scan (TIFF inputs become JPEG by default): libjpeg said "broken data stream", and
    # libavif raised a RuntimeError, which the worker retried as a passing fault.
    src = save(Image.new("L", (70_000, 2), 100), tmp_path / "in.png")

    with pytest.raises(ImageRejected) as raised:
        run(src, tmp_path, {"op": "format", "format": fmt})

    assert str(raised.value) == TOO_LARGE_FOR_FORMAT.format(
        width=70_000, height=2, format=PILLOW_FORMAT[fmt], limit=limit
    )
