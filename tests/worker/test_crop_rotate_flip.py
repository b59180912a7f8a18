"""Crop (a box or an aspect), rotate (counter-clockwise) and flip, through the worker's render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.formats import ImageRejected
from core.processing.sizes import rotated_size
from tests.worker.rendering import BLUE, RED, WHITE, close, colour_bbox, pixel, run, save
from worker.operations import CROP_OUTSIDE


def coordinates(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """Red = x, green = y: every pixel says where it came from."""
    across = Image.linear_gradient("L").transpose(Image.Transpose.TRANSPOSE)
    down = Image.linear_gradient("L")
    return Image.merge("RGB", (across, down, Image.new("L", (256, 256)))).crop((0, 0, *size))


def marked(size: tuple[int, int]) -> Image.Image:
    """White with a red 10×10 square in the top-left corner."""
    image = Image.new("RGB", size, WHITE)
    image.paste(RED, (0, 0, 10, 10))
    return image


def red_corner(image: Image.Image) -> str:
    """Which corner holds the red mark."""
    width, height = image.size
    corners = {
        "top-left": (2, 2),
        "top-right": (width - 3, 2),
        "bottom-left": (2, height - 3),
        "bottom-right": (width - 3, height - 3),
    }
    found = [name for name, xy in corners.items() if close(pixel(image.convert("RGB"), xy), RED, 40)]
    assert len(found) == 1, found
    return found[0]


# crop


def test_crop_box_takes_exactly_those_pixels(tmp_path: Path) -> None:
    src = save(coordinates(), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "crop", "left": 10, "top": 20, "width": 30, "height": 40})

    assert (result.width, result.height) == out.size == (30, 40)
    assert pixel(out, (0, 0)) == (10, 20, 0)
    assert pixel(out, (29, 39)) == (39, 59, 0)
    assert pixel(out, (7, 11)) == (17, 31, 0)


def test_crop_box_refers_to_the_picture_at_that_step(tmp_path: Path) -> None:
    src = save(coordinates(), tmp_path / "in.png")

    _, out = run(
        src,
        tmp_path,
        {"op": "rotate", "degrees": 90},  # counter-clockwise: the top edge becomes the left edge
        {"op": "crop", "left": 0, "top": 250, "width": 6, "height": 6},
    )

    # After the turn, (0, 250) shows the source pixel at x = 5, y = 0.
    assert pixel(out, (0, 0)) == (5, 0, 0)


@pytest.mark.parametrize(
    "box",
    [
        {"left": 250, "top": 0, "width": 10, "height": 10},
        {"left": 0, "top": 100, "width": 10, "height": 200},
        {"left": 300, "top": 300, "width": 1, "height": 1},
    ],
)
def test_crop_box_outside_the_picture_is_rejected_readably(tmp_path: Path, box: dict[str, int]) -> None:
    src = save(coordinates(), tmp_path / "in.png")

    with pytest.raises(ImageRejected) as raised:
        run(src, tmp_path, {"op": "crop", **box})

    corners = (box["left"], box["top"], box["left"] + box["width"], box["top"] + box["height"])
    assert str(raised.value) == CROP_OUTSIDE.format(box=corners, width=256, height=256)
    assert "256×256 pixels" in str(raised.value)


def test_crop_box_exactly_the_picture_is_fine(tmp_path: Path) -> None:
    src = save(coordinates((64, 48)), tmp_path / "in.png")
    _, out = run(src, tmp_path, {"op": "crop", "left": 0, "top": 0, "width": 64, "height": 48})
    assert out.size == (64, 48) and pixel(out, (63, 47)) == (63, 47, 0)


@pytest.mark.parametrize(
    ("size", "aspect", "expected", "corner"),
    [
        ((300, 100), "1:1", (100, 100), (100, 0)),
        ((100, 300), "1:1", (100, 100), (0, 100)),
        ((256, 256), "16:9", (256, 144), (0, 56)),
        ((256, 256), "9:16", (144, 256), (56, 0)),
        ((200, 100), "2:1", (200, 100), (0, 0)),
    ],
)
def test_crop_aspect_is_centred(
    tmp_path: Path, size: tuple[int, int], aspect: str, expected: tuple[int, int], corner: tuple[int, int]
) -> None:
    image = (
        coordinates((256, 256)).resize((max(size), max(size)), Image.Resampling.NEAREST).crop((0, 0, *size))
    )
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "crop", "aspect": aspect})

    assert (result.width, result.height) == out.size == expected
    assert pixel(out, (0, 0)) == pixel(image, corner)
    assert pixel(out, (expected[0] - 1, expected[1] - 1)) == pixel(
        image, (corner[0] + expected[0] - 1, corner[1] + expected[1] - 1)
    )


# rotate (counter-clockwise) and flip


@pytest.mark.parametrize(
    ("ops", "size", "corner"),
    [
        ([{"op": "rotate", "degrees": 90}], (40, 60), "bottom-left"),
        ([{"op": "rotate", "degrees": 180}], (60, 40), "bottom-right"),
        ([{"op": "rotate", "degrees": 270}], (40, 60), "top-right"),
        ([{"op": "rotate", "degrees": -90}], (40, 60), "top-right"),
        ([{"op": "rotate", "degrees": 360}], (60, 40), "top-left"),
        ([{"op": "flip", "direction": "horizontal"}], (60, 40), "top-right"),
        ([{"op": "flip", "direction": "vertical"}], (60, 40), "bottom-left"),
        (
            [{"op": "flip", "direction": "vertical"}, {"op": "flip", "direction": "horizontal"}],
            (60, 40),
            "bottom-right",
        ),
    ],
)
def test_quarter_turns_and_flips_move_the_marked_corner(
    tmp_path: Path, ops: list[dict[str, Any]], size: tuple[int, int], corner: str
) -> None:
    src = save(marked((60, 40)), tmp_path / "in.png")

    result, out = run(src, tmp_path, *ops)

    assert (result.width, result.height) == out.size == size
    assert red_corner(out) == corner
    # Exact: a quarter turn or a flip moves pixels, it does not resample them.
    assert colour_bbox(out, RED, 0) is not None
    assert len(out.getcolors() or []) == 2


def test_rotate_45_grows_the_canvas_with_white_corners(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 60), BLUE), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "rotate", "degrees": 45})

    assert out.mode == "RGB"
    assert out.size == (result.width, result.height) == rotated_size(45, 100, 60)
    assert out.width > 100 and out.height > 60
    for xy in ((0, 0), (out.width - 1, 0), (0, out.height - 1), (out.width - 1, out.height - 1)):
        assert pixel(out, xy) == WHITE
    assert pixel(out, (out.width // 2, out.height // 2)) == BLUE


def test_rotate_45_on_rgba_leaves_transparent_corners(tmp_path: Path) -> None:
    src = save(Image.new("RGBA", (100, 60), (*BLUE, 255)), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "rotate", "degrees": 45})

    assert out.mode == "RGBA"
    for xy in ((0, 0), (out.width - 1, 0), (0, out.height - 1), (out.width - 1, out.height - 1)):
        assert pixel(out, xy)[3] == 0
    assert pixel(out, (out.width // 2, out.height // 2)) == (*BLUE, 255)


def test_rotate_is_counter_clockwise_at_any_angle(tmp_path: Path) -> None:
    # At 30° counter-clockwise the top-left corner moves down the left side: the red mark ends up
    # in the left half, below where the top edge of the canvas is.
    src = save(marked((100, 100)), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "rotate", "degrees": 30})

    box = colour_bbox(out, RED, 40)
    assert box is not None
    assert box[2] <= out.width // 2
    assert box[1] >= out.height // 6
