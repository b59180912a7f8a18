"""The grayscale, blur and sharpen ops, through the worker's render."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from core.processing.operations import ProcessingInvalid
from tests.worker.rendering import bands, load, pixel, processing, run, save

# grayscale


def test_grayscale_is_luminance(tmp_path: Path) -> None:
    image = bands((60, 20), [(200, 100, 50), (0, 0, 255), (0, 255, 0)], [20, 20, 20])
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "grayscale"})

    assert out.mode == "L" and result.format == "PNG"
    # ITU-R 601: 0.299 R + 0.587 G + 0.114 B.
    assert pixel(out, (10, 10)) == pytest.approx((124,), abs=1)
    assert pixel(out, (30, 10)) == pytest.approx((29,), abs=1)
    assert pixel(out, (50, 10)) == pytest.approx((150,), abs=1)


def test_grayscale_keeps_alpha(tmp_path: Path) -> None:
    image = Image.new("RGBA", (40, 20), (200, 100, 50, 128))
    image.paste((0, 0, 0, 0), (20, 0, 40, 20))
    src = save(image, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "grayscale"})

    assert out.mode == "LA"
    assert pixel(out, (5, 5)) == pytest.approx((124, 128), abs=1)
    assert pixel(out, (30, 5))[1] == 0


def test_grayscale_jpeg_stays_jpeg(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (64, 48), (200, 100, 50)), tmp_path / "in.jpg", quality=95)

    result, out = run(src, tmp_path, {"op": "grayscale"})

    assert (result.format, out.format, out.mode) == ("JPEG", "JPEG", "L")
    assert pixel(out, (30, 20)) == pytest.approx((124,), abs=3)


# blur and sharpen


def edge(size: tuple[int, int] = (80, 20), low: int = 0, high: int = 255) -> Image.Image:
    image = Image.new("L", size, low)
    image.paste(high, (size[0] // 2, 0, *size))
    return image


def row(image: Image.Image, y: int = 10) -> list[int]:
    return [image.getpixel((x, y)) for x in range(image.width)]  # type: ignore[misc]


@pytest.mark.parametrize("radius", [1, 4])
def test_blur_softens_an_edge(tmp_path: Path, radius: float) -> None:
    src = save(edge(), tmp_path / "in.png")
    assert set(row(load(src))) == {0, 255}

    _, out = run(src, tmp_path, {"op": "blur", "radius": radius})

    values = row(out)
    between = [x for x, value in enumerate(values) if 10 < value < 245]
    assert between, "no intermediate values: nothing was blurred"
    assert min(between) < 40 <= max(between)  # the ramp straddles the edge at x = 40
    assert values[0] == 0 and values[-1] == 255  # far from the edge nothing changes


def test_a_bigger_blur_radius_softens_more(tmp_path: Path) -> None:
    src = save(edge(), tmp_path / "in.png")
    spans = []
    for radius in (1, 4):
        _, out = run(src, tmp_path, {"op": "blur", "radius": radius})
        spans.append(sum(1 for value in row(out) if 10 < value < 245))
    assert spans[1] > 2 * spans[0]


@pytest.mark.parametrize("radius", [0, -1, 100.5])
def test_blur_radius_bounds(radius: float) -> None:
    with pytest.raises(ProcessingInvalid, match=r"\[0\]\.radius"):
        processing(ops=[{"op": "blur", "radius": radius}])


def test_sharpen_raises_edge_contrast(tmp_path: Path) -> None:
    soft = edge(low=90, high=160).filter(ImageFilter.GaussianBlur(2))
    src = save(soft, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "sharpen", "radius": 2, "percent": 200, "threshold": 0})

    before, after = row(soft), row(out)

    def steepest(values: list[int]) -> int:
        return max(abs(b - a) for a, b in itertools.pairwise(values))

    assert steepest(after) > steepest(before)
    # Unsharp masking overshoots on both sides of the edge.
    assert min(after) < 90 - 5 and max(after) > 160 + 5
    assert (after[0], after[-1]) == (90, 160)


def test_sharpen_threshold_leaves_small_differences_alone(tmp_path: Path) -> None:
    # A soft step of 20: the unsharp mask's differences stay under 10, yet would change pixels at 0.
    soft = edge(low=100, high=120).filter(ImageFilter.GaussianBlur(2))
    src = save(soft, tmp_path / "in.png")

    _, kept = run(src, tmp_path, {"op": "sharpen", "threshold": 10})
    _, sharpened = run(src, tmp_path, {"op": "sharpen", "threshold": 0})

    assert row(kept) == row(soft)
    assert row(sharpened) != row(soft)
