"""Where a `fill` resize or an `aspect` crop takes its part of the picture, and where the upload's
focus point is after each operation.

The focus point is given as fractions of the picture as displayed (after its EXIF orientation, which
worker.imaging applies before any operation). Operations before the one that uses it may cut,
turn, flip or pad the picture, so the point is carried through each of them as fractions of the
frame at that step (`Focus.after_*`); a point cut away stays at the nearest edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from core.processing.sizes import rotated_size
from worker.saliency import smart_offset

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Focus:
    """A point as fractions of the current frame, from its top left."""

    x: float
    y: float

    def after_box(self, box: Box, size: tuple[float, float]) -> Focus:
        """After keeping `box` (left, top, right, bottom) of a frame of `size`."""
        left, top, right, bottom = box
        width, height = size
        return Focus(
            _fraction(self.x * width - left, right - left), _fraction(self.y * height - top, bottom - top)
        )

    def after_padding(self, inner: tuple[int, int], offset: tuple[int, int], outer: tuple[int, int]) -> Focus:
        """After the frame (`inner`) was put at `offset` on a canvas of size `outer`."""
        return Focus(
            (offset[0] + self.x * inner[0]) / outer[0],
            (offset[1] + self.y * inner[1]) / outer[1],
        )

    def after_rotation(self, degrees: float, size: tuple[int, int]) -> Focus:
        """After a counter-clockwise rotation that grew the canvas to hold the picture."""
        width, height = size
        new_w, new_h = rotated_size(degrees, width, height)
        dx, dy = self.x * width - width / 2, self.y * height - height / 2
        angle = math.radians(degrees)
        # Image coordinates run downwards: a counter-clockwise turn moves the right edge up.
        x = dx * math.cos(angle) + dy * math.sin(angle)
        y = -dx * math.sin(angle) + dy * math.cos(angle)
        return Focus(_fraction(new_w / 2 + x, new_w), _fraction(new_h / 2 + y, new_h))

    def after_flip(self, direction: str) -> Focus:
        return Focus(1 - self.x, self.y) if direction == "horizontal" else Focus(self.x, 1 - self.y)


def offset(
    gravity: str | None, frame: Image.Image, cut: tuple[float, float], focus: Focus | None
) -> tuple[float, float]:
    """(left, top) of a `cut` (width, height) part of `frame` as `gravity` places it: one of the nine
    positions (None is the centre), `smart`, or `focus` (the point at the cut's centre, as near as
    the picture's edges allow; the centre when there is none)."""
    cut_w, cut_h = cut
    slack_x, slack_y = max(0.0, frame.width - cut_w), max(0.0, frame.height - cut_h)
    if gravity == "smart":
        return smart_offset(frame, cut)
    if gravity == "focus" and focus is not None:
        return (
            min(slack_x, max(0.0, focus.x * frame.width - cut_w / 2)),
            min(slack_y, max(0.0, focus.y * frame.height - cut_h / 2)),
        )
    position = gravity if gravity not in (None, "smart", "focus") else "center"
    assert position is not None
    horizontal = 0.0 if "left" in position else 1.0 if "right" in position else 0.5
    vertical = 0.0 if position.startswith("top") else 1.0 if position.startswith("bottom") else 0.5
    return slack_x * horizontal, slack_y * vertical


def _fraction(value: float, length: float) -> float:
    return min(1.0, max(0.0, value / length)) if length > 0 else 0.5
