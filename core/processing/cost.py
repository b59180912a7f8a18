"""What an output costs to render, in pixels, estimated from sizes alone: the API's refusal before
queueing and the worker's again once the orientation is known.

Checking only the final size is not enough: a 71-byte PNG enlarged to 16,384 × 16,384 and shrunk
back ends small, yet the worker holds a gigabyte in between; a `rotate` grows the canvas; an
animation repeats every step for every frame. So every step is checked, for every frame the output
keeps, and so is the text image a watermark draws.

The rule, in MAX_OUTPUT_PIXELS (`limit`): the output, and any step that makes more pixels than
the decoded input, may hold at most `limit` pixels over all its frames (as MAX_IMAGE_PIXELS counts an
animation's input). A step no larger than the input costs no more than decoding it, which
MAX_IMAGE_PIXELS already allowed. A watermark's text image may hold at most `limit` pixels.
"""

from __future__ import annotations

from core.processing.operations import MAX_BYTES_ENCODES, Watermark
from core.processing.outputs import Output, Processing
from core.processing.sizes import output_size

# The formats whose outputs keep every frame of an animation; any other keeps the first only.
ANIMATED_OUTPUT_FORMATS = ("GIF", "PNG", "WEBP", "AVIF")

STEP_TOO_LARGE = (
    "[{index}] {op} makes {width:,}×{height:,} pixels; the limit is {limit:,} pixels (MAX_OUTPUT_PIXELS)."
)
STEP_TOO_LARGE_IN_ALL = (
    "[{index}] {op} makes {width:,}×{height:,} pixels in each of {frames:,} frames ({total:,} pixels "
    "in all); the limit is {limit:,} pixels in all (MAX_OUTPUT_PIXELS)."
)
TEXT_TOO_LARGE = (
    "[{index}] watermark: {chars:,} characters at {size:,} px make a text image of up to {pixels:,} "
    "pixels; the limit is {limit:,} pixels (MAX_OUTPUT_PIXELS)."
)

# Bounds of the default font's text image (worker.operations draws with ImageFont.load_default),
# checked against the font in tests/core: no glyph advances more than its size, and a line's box
# ends within TEXT_LINE_BOTTOM sizes plus a few pixels of spacing below its top.
TEXT_ADVANCE = 1.0
TEXT_LINE_BOTTOM = 1.25
TEXT_LINE_SPACING_PX = 4
# worker.operations' automatic font size: a twentieth of the shorter side, at least 12 px.
AUTO_FONT_DIVISOR = 20
AUTO_FONT_MIN = 12


def output_frames(output: Output, input_format: str, frames: int) -> int:
    """How many frames `output` keeps of an input of `frames` frames in `input_format`."""
    chosen = output.format()
    output_format = chosen.format.upper() if chosen else input_format
    return frames if output_format in ANIMATED_OUTPUT_FORMATS else 1


def cost_refusal(output: Output, width: int, height: int, frames: int, *, limit: int) -> str | None:
    """Why rendering `output` from a `width` × `height` picture (oriented) of `frames` frames (as the
    output keeps them, see output_frames) is refused, naming the step; None when it is within
    `limit`. Arithmetic only: microseconds whatever the request."""
    input_pixels = width * height
    last = len(output.ops) - 1
    for index, op in enumerate(output.ops):
        if isinstance(op, Watermark):
            pixels = text_pixels_bound(op, width, height)
            if pixels > limit:
                size = op.size or auto_font_size(width, height)
                chars = len(op.text or "")
                return TEXT_TOO_LARGE.format(index=index, chars=chars, size=size, pixels=pixels, limit=limit)
        width, height = output_size((op,), width, height)
        pixels = width * height
        if (index == last or pixels > input_pixels) and pixels * frames > limit:
            name = getattr(op, "op", type(op).__name__.lower())
            if frames == 1:
                return STEP_TOO_LARGE.format(index=index, op=name, width=width, height=height, limit=limit)
            return STEP_TOO_LARGE_IN_ALL.format(
                index=index,
                op=name,
                width=width,
                height=height,
                frames=frames,
                total=pixels * frames,
                limit=limit,
            )
    return None


def auto_font_size(width: int, height: int) -> int:
    """The largest font size worker.operations chooses by itself for a `width` × `height` picture."""
    return max(AUTO_FONT_MIN, min(width, height) // AUTO_FONT_DIVISOR)


def text_pixels_bound(op: Watermark, width: int, height: int) -> int:
    """At most how many pixels the text image of `op` holds on a `width` × `height` picture: its
    longest line's characters (plus one for overhang) by its lines, each a font size apart."""
    size = op.size or auto_font_size(width, height)
    lines = (op.text or "").split("\n")
    longest = max(len(line) for line in lines)
    text_width = (longest + 1) * TEXT_ADVANCE * size
    text_height = (len(lines) - 1 + TEXT_LINE_BOTTOM) * size + len(lines) * TEXT_LINE_SPACING_PX
    return int(text_width * text_height)


def render_pixels(processing: Processing, width: int, height: int, frames: int, input_format: str) -> int:
    """About how many pixels rendering `processing` touches, from sizes alone: the decode, then
    every step and the encode of every output (each encode its `max_bytes` search may make), for
    each frame that output keeps. A `trim` counts as the size it was given, which it cannot exceed;
    a `smart` gravity's look at the picture is a small downscale, not counted. The worker's
    measure of a render's time and memory (its lanes); an upper bound for JPEG, which a draft()
    decode makes cheaper. Arithmetic only."""
    total = width * height * frames
    for output in processing.outputs:
        kept = output_frames(output, input_format, frames)
        step_width, step_height = width, height
        for op in output.ops:
            step_width, step_height = output_size((op,), step_width, step_height)
            total += step_width * step_height * kept
        chosen = output.format()
        encodes = MAX_BYTES_ENCODES if chosen is not None and chosen.max_bytes is not None else 1
        total += step_width * step_height * kept * encodes  # the encoder
    return total
