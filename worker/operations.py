"""One Pillow function per operation of core.processing.operations: a frame in, a frame out.

Frames arrive in one of the modes worker.imaging normalises to (RGB, RGBA, L, LA or CMYK) and
leave in one of them. Only `watermark` and `overlay` may draw on the frame they are given, and only
when the caller says the frame is its own (`owned`); every other operation returns a new image.

What depends on more than the frame (where a gravity puts a cut, whether the output format keeps
transparency, a watermark image) is decided by worker.imaging and handed in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from core.formats import ImageRejected
from core.processing.operations import (
    Blur,
    Crop,
    Flip,
    Grayscale,
    Overlay,
    Pad,
    Resize,
    Rotate,
    Sharpen,
    Trim,
    Watermark,
    colour_rgba,
)
from core.processing.sizes import crop_box, fitted_size, resized_size

CROP_OUTSIDE = "The crop box {box} lies outside the picture, which is {width}×{height} pixels at that step."

# Resampling: LANCZOS, after an integer `reduce()` by up to size/REDUCING_GAP. A gap of 2 is what
# Pillow's own thumbnail() uses: about 3× faster than plain LANCZOS on big downscales, with no
# difference a person can see at the target size.
REDUCING_GAP = 2.0

_MIN_FONT_SIZE = 12
_FONT_SIZE_DIVISOR = 20  # auto font size = shorter side / 20: readable, yet a small part of a photo
_MARGIN_DIVISOR = 40

_QUARTER_TURNS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
_GREY = {"RGB": "L", "RGBA": "LA", "CMYK": "L", "L": "L", "LA": "LA"}
_COLOUR = {"L": "RGB", "LA": "RGBA"}


@dataclass
class Stamp:
    """What a watermark drew: the encoder keeps small text sharp (no chroma subsampling)."""

    font_size: int


def resize(
    frame: Image.Image,
    op: Resize,
    *,
    full_size: tuple[int, int] | None = None,
    offset: tuple[float, float] | None = None,
) -> Image.Image:
    """`full_size`: the size `frame` stands for when it was decoded at a reduced scale (JPEG draft).
    `offset`: for `fill`, the (left, top) of its cut (fill_cut's size) on `frame`; the centre's
    without it. Mode `pad` is `pad_to_box`."""
    width, height = resized_size(op, *(full_size or frame.size))
    if (width, height) == frame.size:
        return frame.copy()
    box = None
    if op.mode == "fill":
        # Cut the source to the target's aspect first (as a box, so nothing is copied), then scale.
        cut_w, cut_h = fill_cut(frame, op, full_size)
        left, top = offset if offset is not None else ((frame.width - cut_w) / 2, (frame.height - cut_h) / 2)
        box = (left, top, left + cut_w, top + cut_h)
    return frame.resize((width, height), Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP)


def fill_cut(frame: Image.Image, op: Resize, full_size: tuple[int, int] | None = None) -> tuple[float, float]:
    """The part of `frame` a `fill` resize scales to its box: the largest of the box's aspect."""
    width, height = resized_size(op, *(full_size or frame.size))
    scale = max(width / frame.width, height / frame.height)
    # min(): in floating point the side that should equal the frame's can come out a hair
    # larger (61 × (80/61) / 80 > 61), and Pillow refuses a box that starts below zero.
    return min(frame.width, width / scale), min(frame.height, height / scale)


def pad_to_box(
    frame: Image.Image, op: Resize, *, full_size: tuple[int, int] | None = None, transparent: bool
) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """Resize mode `pad`: fit inside the box, then centre on a canvas of exactly the box. Also
    returns the fitted picture's size and where it was put (for the focus point)."""
    assert op.width is not None and op.height is not None
    inner = fitted_size(op, *(full_size or frame.size))
    fitted = (
        frame
        if inner == frame.size
        else frame.resize(inner, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    )
    at = ((op.width - inner[0]) // 2, (op.height - inner[1]) // 2)
    return _extended(fitted, (op.width, op.height), at, _fill_colour(op.background, transparent)), inner, at


def pad(frame: Image.Image, op: Pad, *, transparent: bool) -> Image.Image:
    size = (frame.width + 2 * op.margin, frame.height + 2 * op.margin)
    return _extended(frame, size, (op.margin, op.margin), _fill_colour(op.background, transparent))


def trim_box(frame: Image.Image, op: Trim) -> tuple[int, int, int, int] | None:
    """The box inside the border the top-left pixel's colour makes (within `op.threshold` in every
    channel, transparency included); None when the whole frame is that colour."""
    if frame.mode in ("RGBA", "LA"):
        # Compared premultiplied: the colour channels of transparent pixels, which do not show and
        # which editors and lossy encoders fill with anything, make no difference then.
        frame = frame.convert(frame.mode[:-1] + "a")
    corner = frame.getpixel((0, 0))
    corner_values = corner if isinstance(corner, tuple) else (corner,)
    differs: Image.Image | None = None
    for band, value in zip(frame.split(), corner_values, strict=True):
        low, high = int(value) - op.threshold, int(value) + op.threshold  # type: ignore[arg-type]
        mask = band.point(lambda v, low=low, high=high: 0 if low <= v <= high else 255)
        differs = mask if differs is None else ImageChops.lighter(differs, mask)
    assert differs is not None
    return differs.getbbox()


def overlay(frame: Image.Image, op: Overlay, mark: Image.Image, *, owned: bool) -> Image.Image:
    """`mark` (RGBA) over `frame`; draws on `frame` itself when `owned` and its mode allows."""
    margin = op.margin if op.margin is not None else max(1, min(frame.size) // _MARGIN_DIVISOR)
    room = (frame.width, frame.height) if op.tile else (frame.width - 2 * margin, frame.height - 2 * margin)
    scaled = _scaled_mark(mark, op.scale, frame.width, (max(1, room[0]), max(1, room[1])))
    if op.opacity < 1:
        scaled = scaled.copy()
        scaled.putalpha(scaled.getchannel("A").point(lambda v: round(v * op.opacity)))
    if op.tile:
        layer, at = _tiled(scaled, frame.size, gap=margin), (0, 0)
    else:
        x, y = _place(op.position, frame.size, scaled.size, margin)
        # A margin past half the frame cannot be kept on both sides (the mark shrinks to a pixel):
        # the mark stays on the frame, as near to where it was asked as the edges allow.
        at = (min(max(0, x), frame.width - scaled.width), min(max(0, y), frame.height - scaled.height))
        layer = scaled
    if frame.mode in _COLOUR:
        frame, owned = frame.convert(_COLOUR[frame.mode]), True  # a coloured mark needs colour pixels
    if not owned:
        frame = frame.copy()
    layer = layer.crop((0, 0, min(layer.width, frame.width - at[0]), min(layer.height, frame.height - at[1])))
    if frame.mode == "RGBA":
        frame.alpha_composite(layer, dest=at)
    else:
        # RGB, or CMYK kept as CMYK (its ICC profile stays valid), as `watermark` does.
        frame.paste(layer.convert("RGB").convert(frame.mode), at, layer.getchannel("A"))
    return frame


def _scaled_mark(mark: Image.Image, scale: float | None, width: int, room: tuple[int, int]) -> Image.Image:
    """The mark `scale` times `width` wide (its own size without), shrunk to fit `room`."""
    size = (mark.width, mark.height)
    if scale is not None:
        target_w = max(1, round(width * scale))
        size = (target_w, max(1, round(mark.height * target_w / mark.width)))
    shrink = min(1.0, room[0] / size[0], room[1] / size[1])
    if shrink < 1:
        size = (max(1, int(size[0] * shrink)), max(1, int(size[1] * shrink)))
    if size == mark.size:
        return mark
    return mark.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def _tiled(mark: Image.Image, size: tuple[int, int], *, gap: int) -> Image.Image:
    """A transparent layer of `size` with `mark` repeated `gap` pixels apart from its top left. The
    strip and then the layer double at each paste: a handful of pastes even for a 1-pixel mark."""
    # No bigger than the layer: a gap wider than the picture (margin up to 16,384) leaves one tile on
    # it, and an unclipped cell would be gigabytes that no cost check counts.
    cell = Image.new("RGBA", (min(mark.width + gap, size[0]), min(mark.height + gap, size[1])))
    cell.paste(mark, (0, 0))
    strip = Image.new("RGBA", (size[0], cell.height))
    filled = 0
    while filled < size[0]:
        source = cell if filled == 0 else strip.crop((0, 0, filled, cell.height))
        strip.paste(source, (filled, 0))
        filled += source.width
    layer = Image.new("RGBA", size)
    filled = 0
    while filled < size[1]:
        source = strip if filled == 0 else layer.crop((0, 0, size[0], filled))
        layer.paste(source, (0, filled))
        filled += source.height
    return layer


def _fill_colour(background: str | None, transparent: bool) -> tuple[int, int, int, int]:
    """What `pad` extends with: the colour asked for, else transparent where the output format keeps
    transparency, else white."""
    if background is not None:
        return colour_rgba(background)
    return (255, 255, 255, 0) if transparent else (255, 255, 255, 255)


def _extended(
    frame: Image.Image, size: tuple[int, int], at: tuple[int, int], colour: tuple[int, int, int, int]
) -> Image.Image:
    """`frame` at `at` on a canvas of `size` in `colour`, in a mode that holds both."""
    red, green, blue, alpha = colour
    mode = frame.mode
    if alpha < 255:
        mode = {"L": "LA", "RGB": "RGBA", "CMYK": "RGBA"}.get(mode, mode)
    if not red == green == blue:
        mode = _COLOUR.get(mode, mode)
    if frame.mode != mode:
        frame = frame.convert(mode)
    fill: tuple[int, ...] | int
    if mode == "CMYK":
        fill = (255 - red, 255 - green, 255 - blue, 0)  # the naive complement, as _ink
    else:
        fills: dict[str, tuple[int, ...] | int] = {
            "L": red,
            "LA": (red, alpha),
            "RGB": (red, green, blue),
            "RGBA": colour,
        }
        fill = fills[mode]
    canvas = Image.new(mode, size, fill)
    canvas.paste(frame, at)
    return canvas


def crop(frame: Image.Image, op: Crop, *, offset: tuple[float, float] | None = None) -> Image.Image:
    """`offset`: for an `aspect` crop, its (left, top) as its gravity placed it; centred without."""
    box = placed_crop_box(frame, op, offset)
    if box[2] > frame.width or box[3] > frame.height:
        raise ImageRejected(CROP_OUTSIDE.format(box=box, width=frame.width, height=frame.height))
    return frame.crop(box)


def placed_crop_box(
    frame: Image.Image, op: Crop, offset: tuple[float, float] | None = None
) -> tuple[int, int, int, int]:
    box = crop_box(op, frame.width, frame.height)
    if offset is not None and op.aspect is not None:
        left, top = round(offset[0]), round(offset[1])
        box = (left, top, left + box[2] - box[0], top + box[3] - box[1])
    return box


def rotate(frame: Image.Image, op: Rotate) -> Image.Image:
    degrees = op.degrees % 360
    if degrees == 0:
        return frame.copy()
    if degrees in _QUARTER_TURNS:
        return frame.transpose(_QUARTER_TURNS[int(degrees)])
    return frame.rotate(degrees, Image.Resampling.BICUBIC, expand=True, fillcolor=_background(frame.mode))


def flip(frame: Image.Image, op: Flip) -> Image.Image:
    if op.direction == "horizontal":
        return frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return frame.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def grayscale(frame: Image.Image, op: Grayscale) -> Image.Image:
    return frame.convert(_GREY[frame.mode])


def blur(frame: Image.Image, op: Blur) -> Image.Image:
    return frame.filter(ImageFilter.GaussianBlur(op.radius))


def sharpen(frame: Image.Image, op: Sharpen) -> Image.Image:
    return frame.filter(ImageFilter.UnsharpMask(op.radius, op.percent, op.threshold))


def watermark(frame: Image.Image, op: Watermark, *, owned: bool) -> tuple[Image.Image, Stamp]:
    """Stamp `op.text`; draws on `frame` itself when `owned` (a full-size copy saved)."""
    red, green, blue, alpha = op.rgba()
    if frame.mode in _COLOUR and not red == green == blue:
        frame, owned = frame.convert(_COLOUR[frame.mode]), True  # coloured text needs colour pixels
    if not owned:
        frame = frame.copy()
    text = op.text or ""
    size, margin = _fitted_size(text, frame.width, frame.height, op.size)
    small = size * size * len(text) <= _CACHED_MASK_PIXELS  # a bound on the mask's pixels
    mask = _cached_text_mask(text, size, alpha) if small else _text_mask(text, size, alpha)
    if mask is None:
        return frame, Stamp(size)  # nothing visible to draw (only spaces)
    right, bottom = mask.size
    x, y = _place(op.position, frame.size, (right, bottom), margin)
    region = (x, y, x + right, y + bottom)
    visible = (
        max(0, region[0]),
        max(0, region[1]),
        min(frame.width, region[2]),
        min(frame.height, region[3]),
    )
    if visible[2] > visible[0] and visible[3] > visible[1]:
        mask = mask.crop((visible[0] - x, visible[1] - y, visible[2] - x, visible[3] - y))
        frame.paste(_ink(frame.mode, (red, green, blue)), visible, mask)
    return frame, Stamp(size)


# The stamp's size and its rendered text are the same for every picture of the same size with the
# same text (a default preset over one camera's photos): kept, they save about 0.45 ms of the 3 ms a
# small photo's whole render takes. Fonts are made inside (a FreeType face must not be shared between
# threads); the cached masks are only ever read. Only small masks are kept (big pictures gain nothing
# measurable from it): at most 16 of up to 0.5 MP each.
_CACHED_MASK_PIXELS = 500_000


@functools.lru_cache(maxsize=512)
def _fitted_size(text: str, width: int, height: int, size: int | None) -> tuple[int, int]:
    """Font size and margin. Auto size: scaled to the picture, shrunk (not below the minimum) to fit
    its width."""
    shorter = min(width, height)
    margin = max(1, shorter // _MARGIN_DIVISOR)
    if size is not None:
        return size, margin
    size = max(_MIN_FONT_SIZE, shorter // _FONT_SIZE_DIVISOR)
    font = ImageFont.load_default(size=size)
    longest = max((font.getlength(line) for line in text.splitlines()), default=0.0)
    room = width - 2 * margin
    if longest > room and size > _MIN_FONT_SIZE:
        size = max(_MIN_FONT_SIZE, int(size * room / longest))
    return size, margin


def _text_mask(text: str, size: int, alpha: int) -> Image.Image | None:
    """The text as a mask of its own size, to paste the colour through: antialiased edges, any
    opacity, and no full-size layer. None when nothing would show (only spaces)."""
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox(
        (0, 0), text, font=font
    )
    if right <= left or bottom <= top:
        return None
    mask = Image.new("L", (int(right), int(bottom)))
    ImageDraw.Draw(mask).multiline_text((0, 0), text, fill=alpha, font=font)
    return mask


def _place(position: str, frame: tuple[int, int], text: tuple[int, int], margin: int) -> tuple[int, int]:
    (width, height), (text_w, text_h) = frame, text
    vertical, _, horizontal = position.rpartition("-") if "-" in position else ("", "", position)
    if position in ("top", "bottom"):
        vertical, horizontal = position, "center"
    x = {"left": margin, "center": (width - text_w) // 2, "right": width - text_w - margin}[horizontal]
    y = {"top": margin, "": (height - text_h) // 2, "bottom": height - text_h - margin}[vertical]
    return x, y


def _ink(mode: str, rgb: tuple[int, int, int]) -> tuple[int, ...] | int:
    red, green, blue = rgb
    if mode in ("L", "LA"):
        return red if mode == "L" else (red, 255)
    if mode == "CMYK":
        # Kept as CMYK rather than converted to RGB: its CMYK ICC profile stays valid. The naive
        # complement is exact for the pure colours a stamp uses.
        return (255 - red, 255 - green, 255 - blue, 0)
    return rgb if mode == "RGB" else (*rgb, 255)


def _background(mode: str) -> tuple[int, ...] | int:
    """What a non-quarter rotation puts in the corners: white, or transparent where there is alpha."""
    backgrounds: dict[str, tuple[int, ...] | int] = {
        "RGB": (255, 255, 255),
        "RGBA": (0, 0, 0, 0),
        "L": 255,
        "LA": (0, 0),
        "CMYK": (0, 0, 0, 0),
    }
    return backgrounds[mode]


_cached_text_mask = functools.lru_cache(maxsize=16)(_text_mask)
