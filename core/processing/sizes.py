"""The pixel size operations produce, without touching pixels.

Shared by the cost check (core.processing.cost: the API's before queueing, the worker's again once
it knows the orientation) and the worker, which resizes and crops by these very numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from core.processing.operations import Crop, Op, Pad, Resize, Rotate


def output_size(ops: Iterable[Op], width: int, height: int) -> tuple[int, int]:
    """The pixel size `ops` produce from a `width` × `height` picture (already oriented).

    A crop box outside the picture is reported by the worker, which knows the exact size at that
    step; here it is taken at face value. A `trim` depends on the pixels: its size here is the one
    it cannot exceed, the size it was given.
    """
    for op in ops:
        if isinstance(op, Resize):
            width, height = resized_size(op, width, height)
        elif isinstance(op, Crop):
            left, top, right, bottom = crop_box(op, width, height)
            width, height = right - left, bottom - top
        elif isinstance(op, Rotate):
            width, height = rotated_size(op.degrees, width, height)
        elif isinstance(op, Pad):
            width, height = width + 2 * op.margin, height + 2 * op.margin
    return width, height


def resized_size(op: Resize, width: int, height: int) -> tuple[int, int]:
    if op.mode in ("exact", "fill", "pad"):
        assert op.width is not None and op.height is not None
        return op.width, op.height
    return fitted_size(op, width, height)


def fitted_size(op: Resize, width: int, height: int) -> tuple[int, int]:
    """The size `fit` makes (and `pad` before it extends to the box)."""
    scale = min(
        op.width / width if op.width else float("inf"),
        op.height / height if op.height else float("inf"),
    )
    if scale >= 1 and not op.enlarge:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def crop_box(op: Crop, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop on a `width` × `height` picture."""
    ratio = op.aspect_ratio()
    if ratio is None:
        assert op.left is not None and op.top is not None and op.width is not None and op.height is not None
        return op.left, op.top, op.left + op.width, op.top + op.height
    aspect_w, aspect_h = ratio
    if width * aspect_h > height * aspect_w:  # too wide: keep the full height
        new_w, new_h = max(1, round(height * aspect_w / aspect_h)), height
    else:
        new_w, new_h = width, max(1, round(width * aspect_h / aspect_w))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return left, top, left + new_w, top + new_h


def rotated_size(degrees: float, width: int, height: int) -> tuple[int, int]:
    """The canvas `rotate(expand=True)` makes, to a pixel (quarter turns swap the sides exactly)."""
    turns = degrees % 360
    if turns in (90, 270):
        return height, width
    if turns in (0, 180):
        return width, height
    # Pillow's own arithmetic (Image.rotate): it rounds each rotated corner outwards, so its canvas
    # can be a pixel wider than ceil(w·cos + h·sin). Same angle as worker.operations.rotate passes.
    angle = -math.radians(turns)
    a, b, d, e = (
        round(value, 15) for value in (math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle))
    )
    c = a * (-width / 2) + b * (-height / 2) + width / 2
    f = d * (-width / 2) + e * (-height / 2) + height / 2
    corners = ((0, 0), (width, 0), (width, height), (0, height))
    xs = [a * x + b * y + c for x, y in corners]
    ys = [d * x + e * y + f for x, y in corners]
    return math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))
