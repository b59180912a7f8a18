"""Inputs in every image mode: CMYK, 16-bit, palette with transparency, grey with alpha."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageStat

from tests.worker.rendering import BLUE, RED, WHITE, close, colour_bbox, luminance, pixel, run, save
from worker.imaging import EncoderSettings


def cmyk_jpeg(path: Path) -> Path:
    image = Image.new("CMYK", (80, 60), (0, 0, 0, 0))  # white
    image.paste((0, 255, 255, 0), (0, 0, 40, 60))  # red on the left
    return save(image, path, quality=95)


def test_cmyk_jpeg_resize_becomes_rgb(tmp_path: Path) -> None:
    # Web outputs are sRGB: CMYK without a profile takes Pillow's conversion.
    result, out = run(cmyk_jpeg(tmp_path / "in.jpg"), tmp_path, {"op": "resize", "width": 40})
    assert (result.format, out.mode, out.size) == ("JPEG", "RGB", (40, 30))
    assert close(pixel(out, (5, 15)), RED, 16)
    assert close(pixel(out, (35, 15)), WHITE, 8)


def test_cmyk_jpeg_resize_stays_cmyk_when_profiles_are_kept(tmp_path: Path) -> None:
    encoder = EncoderSettings(keep_icc_profiles=True)
    result, out = run(
        cmyk_jpeg(tmp_path / "in.jpg"), tmp_path, {"op": "resize", "width": 40}, encoder=encoder
    )
    assert (result.format, out.mode, out.size) == ("JPEG", "CMYK", (40, 30))
    assert close(pixel(out.convert("RGB"), (5, 15)), RED, 16)
    assert close(pixel(out.convert("RGB"), (35, 15)), WHITE, 8)


def test_cmyk_jpeg_grayscale(tmp_path: Path) -> None:
    result, out = run(cmyk_jpeg(tmp_path / "in.jpg"), tmp_path, {"op": "grayscale"})
    assert (result.format, out.mode) == ("JPEG", "L")
    assert pixel(out, (10, 30)) == pytest.approx((luminance(RED),), abs=6)
    assert pixel(out, (70, 30)) == pytest.approx((255,), abs=4)


def test_cmyk_jpeg_to_webp(tmp_path: Path) -> None:
    result, out = run(cmyk_jpeg(tmp_path / "in.jpg"), tmp_path, {"op": "format", "format": "webp"})
    assert (result.format, out.mode) == ("WEBP", "RGB")
    assert close(pixel(out, (10, 30)), RED, 24) and close(pixel(out, (70, 30)), WHITE, 12)


def test_16_bit_png(tmp_path: Path) -> None:
    image = Image.new("I;16", (64, 48), 0x8000)
    image.paste(0xFFFF, (32, 0, 64, 48))
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 32}, {"op": "rotate", "degrees": 180})

    assert (result.format, out.mode, out.size) == ("PNG", "L", (32, 24))
    # Turned half way: the white half is now on the left.
    assert pixel(out, (4, 12)) == pytest.approx((255,), abs=1)
    assert pixel(out, (28, 12)) == pytest.approx((128,), abs=1)


def palette_png(path: Path) -> Path:
    image = Image.new("P", (80, 40), 0)
    image.putpalette([255, 255, 255, *RED, *BLUE])
    image.paste(1, (0, 0, 40, 40))
    image.paste(2, (40, 0, 60, 40))
    return save(image, path, transparency=0)  # the white right quarter is transparent


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    result, out = run(palette_png(tmp_path / "in.png"), tmp_path, {"op": "resize", "width": 40})
    assert (result.format, out.mode, out.size) == ("PNG", "RGBA", (40, 20))
    assert close(pixel(out, (5, 10)), (*RED, 255), 4)
    assert close(pixel(out, (25, 10)), (*BLUE, 255), 4)
    assert pixel(out, (38, 10))[3] == 0


def test_palette_png_to_jpeg_is_flattened_on_white(tmp_path: Path) -> None:
    result, out = run(palette_png(tmp_path / "in.png"), tmp_path, {"op": "format", "format": "jpeg"})
    assert (result.format, out.mode) == ("JPEG", "RGB")
    assert close(pixel(out, (75, 20)), WHITE, 4) and close(pixel(out, (10, 20)), RED, 10)


def la_png(path: Path) -> Path:
    image = Image.new("LA", (60, 40), (200, 255))
    image.paste((50, 0), (30, 0, 60, 40))  # the right half is transparent
    return save(image, path)


def test_la_png_resize_and_rotate_keep_alpha(tmp_path: Path) -> None:
    result, out = run(
        la_png(tmp_path / "in.png"), tmp_path, {"op": "resize", "width": 30}, {"op": "rotate", "degrees": 45}
    )
    assert (result.format, out.mode) == ("PNG", "LA")
    assert pixel(out, (0, 0))[1] == 0  # a new corner is transparent
    grey, alpha = out.split()
    opaque = alpha.point(lambda value: 255 if value == 255 else 0)
    assert ImageStat.Stat(grey, opaque).mean[0] == pytest.approx(200, abs=2)


def test_la_png_grayscale_and_coloured_watermark(tmp_path: Path) -> None:
    _, grey = run(la_png(tmp_path / "in.png"), tmp_path, {"op": "grayscale"})
    assert grey.mode == "LA" and pixel(grey, (10, 20)) == (200, 255) and pixel(grey, (50, 20))[1] == 0
    _, stamped = run(la_png(tmp_path / "in.png"), tmp_path, {"op": "watermark", "text": "M", "size": 20})
    assert stamped.mode == "RGBA"
    assert colour_bbox(stamped, RED) is not None
