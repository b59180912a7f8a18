"""`gravity: "smart"`: where a crop keeps the part of the picture a person looks at.

The approach of smartcrop.js and libvips' `attention`, in Pillow alone: on a small copy of the frame
(at most ANALYSIS_SIDE pixels a side, so a 12 MP photo costs a few milliseconds, not a second
decode), score each pixel by its edges (detail), skin tones and saturation; project the scores onto
the axis the crop can move along; and slide the crop's window along it, each position scored with
weights that fall off towards the window's edges, so that a subject ends up inside the crop rather
than at its border. A picture with nothing salient (a flat colour) keeps its centre.

The PyPI `smartcrop` package (MIT, kept up) was measured first: 0.35 s on a 12 MP frame, more than a
whole `center` render of a draft-decoded JPEG, and it brings numpy into the worker image. This module
decides from a 128-pixel copy instead; see BENCHMARKS.md, "Smart gravity".
"""

from __future__ import annotations

from typing import cast

from PIL import Image, ImageChops, ImageFilter

# Long side of the copy the decision is made on: a crop is placed to within 1/ANALYSIS_SIDE of the
# picture, about 8 pixels of a 1000-pixel output.
ANALYSIS_SIDE = 128
# Samples a side averaged into each analysed pixel (see _small).
_SAMPLES = 8
# How much each feature weighs (of 255 for edges): skin is what people look at first.
_SKIN_WEIGHT = 1.0
_SATURATION_WEIGHT = 0.5
# A window's edges count this much of its centre (smartcrop's "edge weight").
_EDGE_IMPORTANCE = 0.3
# Positions scoring within this fraction of the best are taken as equal: the nearest to the centre
# wins, so that noise does not move a crop on a plain picture.
_TIE = 0.02
# YCbCr ranges of skin tones (Chai and Ngan's rule, commonly used for skin detection).
_SKIN_CB = (77, 127)
_SKIN_CR = (133, 173)


def smart_offset(frame: Image.Image, cut: tuple[float, float]) -> tuple[float, float]:
    """(left, top) of a `cut` (width, height) crop of `frame` that keeps its most salient part."""
    cut_w, cut_h = cut
    slack_x, slack_y = frame.width - cut_w, frame.height - cut_h
    if slack_x <= 0.5 and slack_y <= 0.5:
        return max(0.0, slack_x / 2), max(0.0, slack_y / 2)
    scores = _saliency(_small(frame))
    left = (
        _best(scores, horizontal=True, window=cut_w / frame.width) * slack_x if slack_x > 0.5 else slack_x / 2
    )
    top = (
        _best(scores, horizontal=False, window=cut_h / frame.height) * slack_y
        if slack_y > 0.5
        else slack_y / 2
    )
    return max(0.0, left), max(0.0, top)


def _small(frame: Image.Image) -> Image.Image:
    """An RGB copy of at most ANALYSIS_SIDE a side, each of its pixels the mean of a sample of the
    frame's. Averaging every pixel of a 12 MP frame reads all 36 MB of it (8 ms here, as much as the
    crop itself); a nearest-pixel sample of 8 × 8 per analysed pixel first makes it 2 ms, and 64
    samples average out grain as well as 1,000 would."""
    scale = ANALYSIS_SIDE / max(frame.size)
    if scale >= 1:
        small = frame
    else:
        size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        sampled = frame
        if scale * _SAMPLES < 1:
            sample_size = (size[0] * _SAMPLES, size[1] * _SAMPLES)
            sampled = frame.resize(sample_size, Image.Resampling.NEAREST)
        small = sampled.resize(size, Image.Resampling.BOX)
    if small.mode in ("RGBA", "LA"):
        # Transparent parts are not content: flattened on black, they score nothing.
        flat = Image.new("RGB", small.size)
        flat.paste(small.convert("RGBA"), mask=small.getchannel("A"))
        return flat
    return small.convert("RGB")


def _saliency(rgb: Image.Image) -> Image.Image:
    """Each pixel's score, 0-255 (mode L)."""
    edges = rgb.convert("L").filter(ImageFilter.FIND_EDGES)
    _, cb, cr = rgb.convert("YCbCr").split()
    skin = ImageChops.multiply(
        cb.point(lambda v: 255 if _SKIN_CB[0] <= v <= _SKIN_CB[1] else 0),
        cr.point(lambda v: 255 if _SKIN_CR[0] <= v <= _SKIN_CR[1] else 0),
    )
    _, saturation, value = rgb.convert("HSV").split()
    # Saturation means little in the dark, where noise makes any hue.
    saturation = ImageChops.multiply(saturation, value)
    scores = ImageChops.add(edges, skin.point(lambda v: round(v * _SKIN_WEIGHT)))
    return ImageChops.add(scores, saturation.point(lambda v: round(v * _SATURATION_WEIGHT)))


def _best(scores: Image.Image, *, horizontal: bool, window: float) -> float:
    """Where along the axis the window (a fraction of the axis) does best, as a fraction of the room
    it has to move (0: at the start, 1: at the end)."""
    length = scores.width if horizontal else scores.height
    # A BOX resize to one row (or column) is each column's (row's) mean, computed in C.
    profile_image = scores.convert("F").resize(
        (length, 1) if horizontal else (1, length), Image.Resampling.BOX
    )
    profile = cast(list[float], list(profile_image.get_flattened_data()))  # mode F: one float each
    size = min(length, max(1, round(window * length)))
    positions = length - size
    if positions <= 0:
        return 0.5
    weights = [_importance(index, size) for index in range(size)]
    totals = [
        sum(weight * value for weight, value in zip(weights, profile[start : start + size], strict=True))
        for start in range(positions + 1)
    ]
    best = max(totals)
    if best <= 0:
        return 0.5
    middle = positions / 2
    chosen = min(
        (start for start, total in enumerate(totals) if total >= best * (1 - _TIE)),
        key=lambda start: abs(start - middle),
    )
    return chosen / positions


def _importance(index: int, size: int) -> float:
    """A window's weight at `index`: 1 in its middle, _EDGE_IMPORTANCE at its edges (a tent)."""
    if size == 1:
        return 1.0
    distance = abs(index - (size - 1) / 2) / ((size - 1) / 2)
    return 1.0 - (1.0 - _EDGE_IMPORTANCE) * distance
