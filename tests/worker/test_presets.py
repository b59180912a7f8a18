"""Every built-in preset, rendered the worker's way."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.processing.presets import BUILTIN_PRESETS
from tests.worker.rendering import (
    BLUE,
    GREEN,
    RED,
    assert_all,
    bands,
    close,
    colour_bbox,
    load,
    pixel,
    processing,
    render_all,
    save,
)
from worker.imaging import ProcessedImage


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4000×3000 (12 MP), left half green and right half blue, with a red corner mark."""
    image = Image.new("RGB", (4000, 3000), BLUE)
    image.paste(GREEN, (0, 0, 2000, 3000))
    image.paste(RED, (0, 0, 400, 400))
    return save(image, tmp_path_factory.mktemp("big") / "in.jpg", quality=90)


def preset(name: str, src: Path, tmp_path: Path) -> tuple[ProcessedImage, Image.Image]:
    chosen = processing(preset=name)
    assert chosen.outputs[0].preset == name
    ((result, dst),) = render_all(src, chosen, tmp_path)
    return result, load(dst)


def test_web_preset(tmp_path: Path, big_jpeg: Path) -> None:
    result, out = preset("web", big_jpeg, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == ("JPEG", "JPEG", "RGB", (1920, 1440))
    assert (result.width, result.height) == (1920, 1440)
    assert close(pixel(out, (50, 50)), RED, 10)
    assert close(pixel(out, (300, 1000)), GREEN, 10) and close(pixel(out, (1500, 1000)), BLUE, 10)


def test_web_preset_makes_a_png_a_jpeg(tmp_path: Path) -> None:
    src = save(Image.new("RGBA", (200, 100), (*RED, 255)), tmp_path / "in.png")
    result, out = preset("web", src, tmp_path)
    assert (result.format, out.mode, out.size) == ("JPEG", "RGB", (200, 100))  # never enlarged


def test_thumbnail_preset(tmp_path: Path, big_jpeg: Path) -> None:
    result, out = preset("thumbnail", big_jpeg, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == ("JPEG", "JPEG", "RGB", (256, 192))
    assert close(pixel(out, (5, 5)), RED, 12)
    assert close(pixel(out, (60, 150)), GREEN, 12) and close(pixel(out, (200, 150)), BLUE, 12)


def test_thumbnail_preset_never_enlarges(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 300), BLUE), tmp_path / "in.png")
    result, out = preset("thumbnail", src, tmp_path)
    assert (result.format, out.size) == ("PNG", (85, 256))
    src = save(Image.new("RGB", (100, 80), BLUE), tmp_path / "small.png")
    assert preset("thumbnail", src, tmp_path)[1].size == (100, 80)


def test_avatar_preset(tmp_path: Path) -> None:
    # 800×600: the centred 600×600 square drops the 100-pixel red and blue bands on each side.
    src = save(bands((800, 600), [RED, GREEN, BLUE], [100, 600, 100]), tmp_path / "in.png")

    result, out = preset("avatar", src, tmp_path)

    assert (result.format, out.mode, out.size) == ("PNG", "RGB", (512, 512))
    assert_all(out, GREEN, tolerance=2)


def test_avatar_preset_on_a_tall_jpeg(tmp_path: Path) -> None:
    image = bands((800, 600), [RED, GREEN, BLUE], [100, 600, 100]).transpose(Image.Transpose.ROTATE_90)
    assert image.size == (600, 800)
    src = save(image, tmp_path / "in.jpg", quality=95)
    result, out = preset("avatar", src, tmp_path)
    assert (result.format, out.size) == ("JPEG", (512, 512))
    assert colour_bbox(out, RED, 80) is None and colour_bbox(out, BLUE, 80) is None


def test_webp_preset_keeps_the_size(tmp_path: Path) -> None:
    src = save(bands((300, 200), [RED, BLUE], [150, 150]), tmp_path / "in.png")

    result, out = preset("webp", src, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == ("WEBP", "WEBP", "RGB", (300, 200))
    assert close(pixel(out, (20, 100)), RED, 20) and close(pixel(out, (280, 100)), BLUE, 20)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_preset(tmp_path: Path, fmt: str) -> None:
    src = save(Image.new("RGB", (120, 80), (200, 100, 50)), tmp_path / "in", format=fmt, quality=95)

    result, out = preset("grayscale", src, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == (fmt, fmt, "L", (120, 80))
    assert pixel(out, (60, 40)) == pytest.approx((124,), abs=3)


def test_default_preset(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (320, 240), BLUE), tmp_path / "in.jpg", quality=95)

    result, out = preset("default", src, tmp_path)

    assert (result.format, out.mode, out.size) == ("JPEG", "RGB", (320, 240))
    box = colour_bbox(out, RED)
    assert box is not None
    assert box[0] < 32 and box[1] < 24 and box[3] <= 120
    assert close(pixel(out, (300, 220)), BLUE, 8)


def test_every_builtin_preset_is_tested() -> None:
    tested = {
        "web": test_web_preset,
        "thumbnail": test_thumbnail_preset,
        "avatar": test_avatar_preset,
        "webp": test_webp_preset_keeps_the_size,
        "grayscale": test_grayscale_preset,
        "default": test_default_preset,
    }
    assert set(tested) == set(BUILTIN_PRESETS), "a built-in preset without its test here"
