"""The render cost estimate (core.processing.cost): every step and every frame an output keeps is
checked against MAX_OUTPUT_PIXELS, and so is the text image a watermark draws."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from core.processing.cost import (
    STEP_TOO_LARGE,
    STEP_TOO_LARGE_IN_ALL,
    TEXT_TOO_LARGE,
    cost_refusal,
    output_frames,
    text_pixels_bound,
)
from core.processing.forms import resolve
from core.processing.operations import MAX_TEXT_CHARS, Watermark
from core.processing.outputs import Output
from core.processing.presets import BUILTIN_PRESETS

LIMIT = 50_000_000


def output(*ops: dict[str, Any]) -> Output:
    return resolve(
        preset=None,
        ops=json.dumps(list(ops)),
        outputs=None,
        presets=BUILTIN_PRESETS,
        watermark_text="Stamped",
    ).outputs[0]


ENLARGE_AND_BACK = (
    {"op": "resize", "width": 16384, "height": 16384, "mode": "exact"},
    {"op": "resize", "width": 1, "height": 1, "mode": "exact"},
)


def test_an_enlargement_shrunk_back_is_refused_at_the_step_that_enlarges() -> None:
    # The 71-byte PNG bomb: its final size (1×1) was all that was checked.
    refused = cost_refusal(output(*ENLARGE_AND_BACK), 1, 1, 1, limit=LIMIT)

    assert refused == STEP_TOO_LARGE.format(index=0, op="resize", width=16384, height=16384, limit=LIMIT)
    assert refused == (
        "[0] resize makes 16,384×16,384 pixels; the limit is 50,000,000 pixels (MAX_OUTPUT_PIXELS)."
    )


def test_a_rotation_that_grows_the_canvas_past_the_limit_is_refused() -> None:
    # 7,000 × 7,000 is within the limit; turned 45° its canvas is 9,900 × 9,900.
    assert cost_refusal(output({"op": "rotate", "degrees": 90}), 7000, 7000, 1, limit=LIMIT) is None

    refused = cost_refusal(
        output({"op": "rotate", "degrees": 45}, {"op": "resize", "width": 100}), 7000, 7000, 1, limit=LIMIT
    )

    assert refused == STEP_TOO_LARGE.format(index=0, op="rotate", width=9900, height=9900, limit=LIMIT)


def test_every_frame_counts() -> None:
    # 8 frames of 1×1 made 2,000×2,000: 4 MP a frame, 32 MP in all.
    to_2000 = output({"op": "resize", "width": 2000, "height": 2000, "mode": "exact"})
    assert cost_refusal(to_2000, 1, 1, 8, limit=LIMIT) is None

    refused = cost_refusal(to_2000, 1, 1, 8, limit=20_000_000)

    assert refused == STEP_TOO_LARGE_IN_ALL.format(
        index=0, op="resize", width=2000, height=2000, frames=8, total=32_000_000, limit=20_000_000
    )
    assert refused == (
        "[0] resize makes 2,000×2,000 pixels in each of 8 frames (32,000,000 pixels in all); "
        "the limit is 20,000,000 pixels in all (MAX_OUTPUT_PIXELS)."
    )


def test_five_hundred_frames_at_the_per_frame_limit_are_refused() -> None:
    # Each frame (7,071 × 7,071) passed the old per-frame check: 25 G pixels in all.
    big = output({"op": "resize", "width": 7071, "height": 7071, "mode": "exact"})

    refused = cost_refusal(big, 1, 1, 500, limit=LIMIT)

    assert refused is not None and refused.startswith("[0] resize makes 7,071×7,071 pixels in each of 500")


def test_only_the_frames_an_output_keeps_count() -> None:
    animated = output({"op": "resize", "width": 2000, "height": 2000, "mode": "exact"})
    still = output(
        {"op": "resize", "width": 2000, "height": 2000, "mode": "exact"}, {"op": "format", "format": "jpeg"}
    )

    assert output_frames(animated, "GIF", 8) == 8
    assert output_frames(still, "GIF", 8) == 1  # a JPEG keeps the first frame
    assert output_frames(animated, "JPEG", 1) == 1
    assert output_frames(output({"op": "format", "format": "webp"}), "GIF", 8) == 8


def test_steps_no_larger_than_the_input_are_not_refused_but_the_output_is() -> None:
    # A blur of the decoded input costs no more than decoding it (which MAX_IMAGE_PIXELS allowed).
    assert (
        cost_refusal(output({"op": "blur"}, {"op": "resize", "width": 100}), 5000, 4000, 1, limit=1_000_000)
        is None
    )
    refused = cost_refusal(output({"op": "blur"}), 5000, 4000, 1, limit=1_000_000)
    assert refused == STEP_TOO_LARGE.format(index=0, op="blur", width=5000, height=4000, limit=1_000_000)


def test_a_watermark_text_larger_than_the_limit_is_refused_naming_the_step() -> None:
    text = "W" * MAX_TEXT_CHARS
    huge = output({"op": "resize", "width": 100}, {"op": "watermark", "text": text, "size": 1000})

    refused = cost_refusal(huge, 400, 300, 1, limit=LIMIT)

    assert refused == TEXT_TOO_LARGE.format(index=1, chars=200, size=1000, pixels=252_054_000, limit=LIMIT)
    assert refused == (
        "[1] watermark: 200 characters at 1,000 px make a text image of up to 252,054,000 pixels; "
        "the limit is 50,000,000 pixels (MAX_OUTPUT_PIXELS)."
    )


def test_ordinary_watermarks_pass() -> None:
    for ops in (
        ({"op": "watermark"},),  # automatic size, the longest text, the largest picture
        ({"op": "watermark", "text": "© 2026 Example Photography Ltd", "size": 1000},),
        ({"op": "watermark", "text": "x" * MAX_TEXT_CHARS, "size": 200},),
    ):
        assert cost_refusal(output(*ops), 7071, 7071, 1, limit=LIMIT) is None, ops


TEXTS = [
    "W" * 40,
    "@" * 17,
    string.printable.replace("\n", "").replace("\r", "").replace("\x0b", "").replace("\x0c", ""),
    "line\nanother line\n" * 5,
    "g\nj\ny\nQ\n\u00c5\u00e7\u00fe",
    "\u2588\u2593\u4e2d\u6587\u0416\u03a9",
]


@pytest.mark.parametrize("size", [6, 7, 12, 25, 64, 333, 1000])
@pytest.mark.parametrize("text", TEXTS)
def test_the_text_bound_holds_for_the_font_the_worker_draws_with(text: str, size: int) -> None:
    # worker.operations makes its text image as big as this box (from the origin to its corner).
    font = ImageFont.load_default(size=size)
    _, _, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), text, font=font)

    bound = text_pixels_bound(Watermark(op="watermark", text=text, size=size), 100, 100)

    assert right * bottom <= bound
    if size >= 12:  # below, the 4 px between lines outweighs the glyphs
        assert bound <= 4 * max(right * bottom, size * size), "a bound far off refuses ordinary stamps"
