"""Running ops through worker.imaging.render (the worker's own path) and checking pixels, for the
tests of the operations and presets (tests/worker/test_resize.py and its neighbours): every input is
generated in the test with Pillow, in tmp_path, and every op gets a pixel check that a wrong result
would fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops

from core.processing.forms import resolve
from core.processing.outputs import Processing
from core.processing.presets import BUILTIN_PRESETS
from worker.imaging import EncoderSettings, ProcessedImage, RenderLimits, render

TEXT = "imagequeue"
LIMITS = RenderLimits(max_pixels=50_000_000, max_frames=50, max_output_pixels=50_000_000)
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}


def processing(**fields: Any) -> Processing:
    """What the API stores for these form fields (ops and outputs given as Python, sent as JSON)."""
    return resolve(
        preset=fields.get("preset"),
        ops=json.dumps(fields["ops"]) if "ops" in fields else None,
        outputs=json.dumps(fields["outputs"]) if "outputs" in fields else None,
        presets=BUILTIN_PRESETS,
        watermark_text=TEXT,
        focus=fields.get("focus"),
        watermark_images=tuple(fields.get("watermark_images", ())),
    )


def render_all(
    src: Path,
    chosen: Processing,
    tmp_path: Path,
    *,
    limits: RenderLimits = LIMITS,
    encoder: EncoderSettings | None = None,
    watermark_images: dict[str, Path] | None = None,
) -> list[tuple[ProcessedImage, Path]]:
    # No extension, like the worker's temporary paths: the format must not come from the name.
    pairs = [(output, tmp_path / f"out-{output.name}") for output in chosen.outputs]
    results = render(
        src, pairs, limits=limits, encoder=encoder, focus=chosen.focus, watermark_images=watermark_images
    )
    return [(result, dst) for result, (_, dst) in zip(results, pairs, strict=True)]


def run(
    src: Path, tmp_path: Path, *ops: dict[str, Any], focus: str | None = None, **options: Any
) -> tuple[ProcessedImage, Image.Image]:
    """One output with these ops (and the upload's `focus`); its result and its decoded picture."""
    names = tuple(options.get("watermark_images") or ())
    chosen = processing(ops=list(ops), focus=focus, watermark_images=names)
    ((result, dst),) = render_all(src, chosen, tmp_path, **options)
    return result, load(dst)


def load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def colour_bbox(
    image: Image.Image, colour: tuple[int, int, int], tolerance: int = 60
) -> tuple[int, ...] | None:
    """Bounding box of the pixels within `tolerance` of `colour` in every channel."""
    rgb = image.convert("RGB")
    difference = ImageChops.difference(rgb, Image.new("RGB", rgb.size, colour))
    masks = [channel.point(lambda v: 255 if v <= tolerance else 0) for channel in difference.split()]
    return ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2]).getbbox()


def assert_all(image: Image.Image, colour: tuple[int, ...], tolerance: int = 6) -> None:
    """Every pixel within `tolerance` of `colour`."""
    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    for (low, high), wanted in zip(bands, colour, strict=True):
        assert wanted - tolerance <= low and high <= wanted + tolerance, (extrema, colour)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    return value if isinstance(value, tuple) else (value,)  # type: ignore[return-value]


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False)
    )


def bands(size: tuple[int, int], colours: list[tuple[int, int, int]], widths: list[int]) -> Image.Image:
    """Vertical bands of `colours`, `widths` pixels wide from left to right."""
    image = Image.new("RGB", size)
    left = 0
    for colour, width in zip(colours, widths, strict=True):
        image.paste(colour, (left, 0, left + width, size[1]))
        left += width
    return image


def luminance(colour: tuple[int, int, int]) -> int:
    red, green, blue = colour
    return round(0.299 * red + 0.587 * green + 0.114 * blue)


def sideways_jpeg(path: Path, size: tuple[int, int] = (1200, 800), **options: Any) -> Path:
    """Stored left half green, right half blue, with orientation 6 ("rotate 90° clockwise to view"):
    upright, green is on top."""
    exif = options.pop("exif", Image.Exif())
    exif[ExifTags.Base.Orientation] = 6
    stored = bands(size, [GREEN, BLUE], [size[0] // 2, size[0] - size[0] // 2])
    return save(stored, path, exif=exif, quality=92, **options)


def assert_upright(image: Image.Image) -> None:
    rgb = image.convert("RGB")
    width, height = rgb.size
    assert height > width or width == height
    top, bottom = pixel(rgb, (width // 2, height // 8)), pixel(rgb, (width // 2, height * 7 // 8))
    if image.mode == "L":
        assert top[0] == pytest.approx(94, abs=8) and bottom[0] == pytest.approx(29, abs=8)
    else:
        assert close(top, GREEN, 20) and close(bottom, BLUE, 20)
