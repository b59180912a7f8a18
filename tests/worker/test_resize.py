"""The resize op in its three modes (fit, fill, exact), through the worker's render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.worker.rendering import BLUE, GREEN, RED, assert_all, bands, close, colour_bbox, pixel, run, save


def test_resize_fit_keeps_the_aspect_and_the_picture(tmp_path: Path) -> None:
    src = save(bands((200, 100), [RED, BLUE], [100, 100]), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 50, "height": 50})

    assert (result.width, result.height, out.size) == (50, 25, (50, 25))
    assert close(pixel(out, (5, 12)), RED) and close(pixel(out, (45, 12)), BLUE)


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ({"width": 50}, (50, 25)),
        ({"height": 50}, (100, 50)),
        ({"width": 500, "height": 500}, (200, 100)),  # never enlarged
        ({"width": 300}, (200, 100)),
        ({"width": 500, "height": 500, "enlarge": True}, (500, 250)),
        ({"height": 300, "enlarge": True}, (600, 300)),
    ],
)
def test_resize_fit_sizes(tmp_path: Path, op: dict[str, Any], expected: tuple[int, int]) -> None:
    src = save(bands((200, 100), [RED, BLUE], [100, 100]), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", **op})

    assert out.size == (result.width, result.height) == expected
    assert close(pixel(out, (2, 2)), RED) and close(pixel(out, (out.width - 3, out.height - 3)), BLUE)


@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_resize_fill_crops_the_centre(tmp_path: Path, orientation: str) -> None:
    # Red | green | blue: the outer bands lie outside the centred square and must disappear.
    image = bands((300, 100), [RED, GREEN, BLUE], [80, 140, 80])
    if orientation == "tall":
        image = image.transpose(Image.Transpose.ROTATE_90)
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 50, "height": 50, "mode": "fill"})

    assert (result.width, result.height) == out.size == (50, 50)
    assert_all(out, GREEN)


def test_resize_fill_to_a_wider_box(tmp_path: Path) -> None:
    # 100×300 into 100×50: the middle sixth (rows 125-175) of a picture whose top and bottom differ.
    image = bands((300, 100), [RED, GREEN, BLUE], [120, 60, 120]).transpose(Image.Transpose.ROTATE_270)
    src = save(image, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "resize", "width": 100, "height": 50, "mode": "fill"})

    assert out.size == (100, 50)
    assert_all(out, GREEN)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_resize_fill_where_floating_point_overshoots_the_frame(tmp_path: Path, mode: str) -> None:
    # 80 / (80 / 61) is 61.000000000000007: the full-width side of the cut overshoots the frame.
    src = save(Image.new(mode, (61, 43)), tmp_path / "in.png")
    result, out = run(src, tmp_path, {"op": "resize", "width": 80, "height": 20, "mode": "fill"})
    assert (result.width, result.height) == out.size == (80, 20)


def test_resize_exact_stretches(tmp_path: Path) -> None:
    image = Image.new("RGB", (200, 100), BLUE)
    image.paste(RED, (0, 0, 100, 50))
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 40, "height": 120, "mode": "exact"})

    assert (result.width, result.height) == out.size == (40, 120)
    # The red quarter is still a quarter: 20×60 in the top left.
    assert colour_bbox(out, RED, 30) == (0, 0, 20, 60)
