"""Gravity for `resize` mode `fill` and `crop` `aspect`: the nine positions, `smart` and `focus`,
through the worker's render, checked by pixels."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from tests.subjects import MARK, SKIN, SUBJECT_BOX, off_centre_subject, sideways_with_marks
from tests.worker.rendering import BLUE, GREEN, RED, bands, close, colour_bbox, pixel, run, save
from worker.gravity import Focus
from worker.saliency import smart_offset


def three_bands(tmp_path: Path, size: tuple[int, int] = (900, 300)) -> Path:
    """Red, green and blue thirds from left to right (lossless)."""
    third = size[0] // 3
    return save(bands(size, [RED, GREEN, BLUE], [third, third, size[0] - 2 * third]), tmp_path / "in.png")


@pytest.mark.parametrize(
    ("gravity", "left", "right"),
    [(None, GREEN, GREEN), ("center", GREEN, GREEN), ("left", RED, RED), ("right", BLUE, BLUE),
     ("top-left", RED, RED), ("bottom-right", BLUE, BLUE), ("top", GREEN, GREEN)],
)  # fmt: skip
def test_an_aspect_crop_goes_where_its_gravity_says(
    tmp_path: Path, gravity: str | None, left: tuple[int, int, int], right: tuple[int, int, int]
) -> None:
    op = {"op": "crop", "aspect": "1:1", **({"gravity": gravity} if gravity else {})}

    _, out = run(three_bands(tmp_path), tmp_path, op)

    assert out.size == (300, 300)
    assert pixel(out, (2, 150)) == left and pixel(out, (297, 150)) == right


@pytest.mark.parametrize(("gravity", "colour"), [("top", RED), ("bottom", BLUE), ("left", GREEN)])
def test_a_fill_resize_goes_where_its_gravity_says(tmp_path: Path, gravity: str, colour: tuple) -> None:
    # Bands turned on their side: red on top, blue at the bottom of a 300 × 900 picture.
    upright = bands((900, 300), [RED, GREEN, BLUE], [300, 300, 300]).transpose(Image.Transpose.TRANSPOSE)
    src = save(upright, tmp_path / "tall.png")

    _, out = run(
        src, tmp_path, {"op": "resize", "width": 100, "height": 100, "mode": "fill", "gravity": gravity}
    )

    assert out.size == (100, 100)
    assert close(pixel(out, (50, 50)), colour, 3), "the cut is one band high, at that end"


def test_smart_keeps_an_off_centre_subject_that_the_centre_cuts_away(tmp_path: Path) -> None:
    src = save(off_centre_subject(), tmp_path / "in.jpg", quality=92)

    _, centred = run(src, tmp_path, {"op": "crop", "aspect": "1:1"})
    _, smart = run(src, tmp_path, {"op": "crop", "aspect": "1:1", "gravity": "smart"})

    assert centred.size == smart.size == (600, 600)
    assert colour_bbox(centred, SKIN, 30) is None, "the premise: a centred crop misses the subject"
    found = colour_bbox(smart, SKIN, 30)
    assert found is not None
    width = SUBJECT_BOX[2] - SUBJECT_BOX[0]
    assert found[2] - found[0] >= width - 4, f"the whole subject is kept, not a slice of it: {found}"
    assert found[0] > 0 and found[2] < 600, "and it is inside the crop, not against its edge"


def test_smart_fill_keeps_the_subject_too(tmp_path: Path) -> None:
    src = save(off_centre_subject(), tmp_path / "in.jpg", quality=92)

    _, out = run(
        src, tmp_path, {"op": "resize", "width": 200, "height": 200, "mode": "fill", "gravity": "smart"}
    )

    found = colour_bbox(out, SKIN, 30)
    assert found is not None and found[2] - found[0] >= 70  # 240 of 600 px, scaled by a third


def test_smart_on_a_plain_picture_keeps_its_centre(tmp_path: Path) -> None:
    plain = save(Image.new("RGB", (900, 300), (90, 90, 90)), tmp_path / "plain.png")

    _, centred = run(plain, tmp_path, {"op": "crop", "aspect": "1:1"})
    _, smart = run(plain, tmp_path, {"op": "crop", "aspect": "1:1", "gravity": "smart"})

    assert centred.tobytes() == smart.tobytes()


def test_smart_is_decided_on_a_small_copy(tmp_path: Path) -> None:
    """A 12 MP frame is analysed in milliseconds (the bench measures the whole render)."""
    frame = off_centre_subject().resize((4000, 1600))
    started = time.perf_counter()
    left, top = smart_offset(frame, (1600, 1600))
    elapsed = time.perf_counter() - started

    assert top == 0 and left > 2000, "the subject is in the right fifth"
    assert elapsed < 0.5, elapsed  # about 30 ms here; generous for a loaded machine


# focus: fractions of the picture as displayed


def test_focus_on_a_rotated_photo_refers_to_the_picture_as_displayed(tmp_path: Path) -> None:
    # Displayed 600 wide × 1200 high; the mark near the bottom is the point of interest.
    src = tmp_path / "portrait.jpg"
    src.write_bytes(sideways_with_marks((600, 1200), {"wanted": (150, 1000), "other": (450, 150)}))

    _, out = run(src, tmp_path, {"op": "crop", "aspect": "1:1", "gravity": "focus"}, focus="0.25,0.83")

    assert out.size == (600, 600)
    found = colour_bbox(out, MARK, 50)
    # top = 0.83 × 1200 − 300 = 696, kept within the picture: 600; the wanted mark (980-1020) is at 380-420.
    assert found is not None and abs(found[1] - 380) <= 3 and abs(found[0] - 130) <= 3, found
    assert found[3] - found[1] <= 42, "only the wanted mark, not the other"


def test_focus_follows_the_operations_before_the_one_using_it(tmp_path: Path) -> None:
    src = tmp_path / "portrait.jpg"
    src.write_bytes(sideways_with_marks((600, 1200), {"wanted": (150, 1000)}))
    ops = (
        {"op": "rotate", "degrees": 90},  # displayed 1200 wide × 600 high: the mark at (1000, 450)
        {"op": "resize", "width": 300, "height": 300, "mode": "fill", "gravity": "focus"},
    )

    _, out = run(src, tmp_path, *ops, focus="0.25,0.83")

    found = colour_bbox(out, MARK, 60)
    assert found is not None, "the point was carried through the rotation"
    # The 600-px-wide cut is centred on x = 1000 as near as the edge allows: 600..1200, so x 400 → 200.
    assert abs((found[0] + found[2]) / 2 - 200) <= 4, found


def test_focus_arithmetic_through_each_step() -> None:
    point = Focus(0.25, 0.75)

    assert point.after_flip("horizontal") == Focus(0.75, 0.75)
    assert point.after_box((100, 0, 300, 400), (400, 400)) == Focus(0.0, 0.75), "cut away: the nearest edge"
    assert point.after_padding((100, 100), (10, 10), (120, 120)) == Focus(35 / 120, 85 / 120)
    turned = point.after_rotation(90, (400, 200))  # (100, 150) of 400 × 200 → (150, 300) of 200 × 400
    assert turned.x == pytest.approx(0.75) and turned.y == pytest.approx(0.75)
