"""The watermark op: where, how big, which colour and opacity, and drawn on a copy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from core.processing.operations import POSITIONS
from tests.worker.rendering import (
    BLACK,
    BLUE,
    RED,
    TEXT,
    colour_bbox,
    load,
    pixel,
    processing,
    render_all,
    run,
    save,
)


def _third(position: str) -> tuple[int, int]:
    """(column, row) of the 3×3 grid where text at `position` belongs."""
    column = 0 if position.endswith("left") else 2 if position.endswith("right") else 1
    line = 0 if position.startswith("top") else 2 if position.startswith("bottom") else 1
    return column, line


@pytest.mark.parametrize("position", POSITIONS)
def test_watermark_lands_at_its_position(tmp_path: Path, position: str) -> None:
    src = save(Image.new("RGB", (300, 300), BLUE), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "watermark", "text": "Mark", "size": 30, "position": position})

    box = colour_bbox(out, RED)
    assert box is not None
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    assert (int(centre[0] // 100), int(centre[1] // 100)) == _third(position)
    # Inside the picture, within a margin of the edges it is placed against.
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 300 and box[3] <= 300
    if "left" in position:
        assert box[0] < 20
    if "right" in position:
        assert box[2] > 280
    if position.startswith("top"):
        assert box[1] < 25
    if position.startswith("bottom"):
        assert box[3] > 280


def test_watermark_size_is_the_font_size(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (400, 300), BLUE), tmp_path / "in.png")
    heights = []
    for size in (20, 60):
        _, out = run(src, tmp_path, {"op": "watermark", "text": "HH", "size": size})
        box = colour_bbox(out, RED)
        assert box is not None
        heights.append(box[3] - box[1])
    assert heights[1] == pytest.approx(3 * heights[0], rel=0.2)
    assert 10 <= heights[0] <= 20


def test_watermark_colour(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (200, 100), BLACK), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "watermark", "text": "Mark", "size": 30, "color": "#00ff00"})

    assert colour_bbox(out, (0, 255, 0), 10) is not None
    assert colour_bbox(out, RED, 100) is None
    assert out.getextrema()[0] == (0, 0)  # not a trace of the default red


def test_watermark_opacity_blends(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (300, 150), BLUE), tmp_path / "in.png")

    _, opaque = run(src, tmp_path, {"op": "watermark", "text": "MMM", "size": 80})
    _, half = run(src, tmp_path, {"op": "watermark", "text": "MMM", "size": 80, "opacity": 0.5})

    # In the strokes' solid cores, red over blue: full red, or halfway between.
    assert opaque.getextrema()[0][1] == 255
    assert half.getextrema()[0][1] == pytest.approx(128, abs=2)
    assert colour_bbox(half, (128, 0, 127), 2) is not None
    assert half.getextrema()[2][0] == pytest.approx(127, abs=2)  # the blue is never more than half gone


def test_watermark_on_grey_turns_the_picture_to_colour(tmp_path: Path) -> None:
    src = save(Image.new("L", (200, 100), 128), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "watermark", "text": "Mark", "size": 30})

    assert out.mode == "RGB"
    assert colour_bbox(out, RED) is not None
    assert pixel(out, (190, 90)) == (128, 128, 128)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_watermark_draws_on_a_copy_when_the_frame_feeds_another_output(tmp_path: Path, fmt: str) -> None:
    src = save(Image.new("RGB", (300, 200), BLUE), tmp_path / "in", format=fmt, quality=95)
    chosen = processing(
        outputs={
            "top": [{"op": "watermark", "text": "TOP", "size": 40, "position": "top-left"}],
            "plain": [{"op": "format", "format": "png"}],
            "bottom": [{"op": "watermark", "text": "BOTTOM", "size": 40, "position": "bottom-right"}],
        }
    )

    (_, top), (_, plain), (_, bottom) = render_all(src, chosen, tmp_path)

    top_box, bottom_box = colour_bbox(load(top), RED), colour_bbox(load(bottom), RED)
    assert top_box is not None and top_box[3] < 100
    assert colour_bbox(load(plain), RED) is None
    # The last output may draw on the decoded frame, but must still not show the first's stamp.
    assert bottom_box is not None and bottom_box[1] > 100


def test_a_kept_stamp_comes_out_the_same_every_time_and_from_every_thread(tmp_path: Path) -> None:
    """The rendered text is kept between images of one size: reused, never drawn on, never mixed up."""
    src = save(Image.new("RGB", (300, 200), BLUE), tmp_path / "in.png")
    stamp = {"op": "watermark", "text": "Kept", "size": 40, "position": "center"}

    def stamped(name: str, op: dict[str, Any]) -> Image.Image:
        folder = tmp_path / name
        folder.mkdir()
        return run(src, folder, op)[1]

    first = stamped("first", stamp)
    with ThreadPoolExecutor(max_workers=4) as threads:
        repeats = list(threads.map(lambda index: stamped(f"again-{index}", stamp), range(16)))
    other_text = stamped("other", {**stamp, "text": "Else"})

    assert colour_bbox(first, RED) is not None
    assert all(ImageChops.difference(first, repeat).getbbox() is None for repeat in repeats)
    assert ImageChops.difference(first, other_text).getbbox() is not None


def test_default_watermark_text_comes_from_the_upload(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (300, 200), BLUE), tmp_path / "in.png")
    _, with_default = run(src, tmp_path, {"op": "watermark", "size": 30})
    _, explicit = run(src, tmp_path, {"op": "watermark", "size": 30, "text": TEXT})
    assert ImageChops.difference(with_default, explicit).getbbox() is None
