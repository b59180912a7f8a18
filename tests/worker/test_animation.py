"""Animated inputs: frames and durations kept, or the first frame for JPEG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.processing.operations import OUTPUT_FORMATS
from tests.worker.rendering import PILLOW_FORMAT, WHITE, close, luminance, pixel, run, save

COLOURS = [(200, 0, 200), (0, 160, 0), (0, 0, 220)]
DURATIONS = [100, 200, 300]


def animation(path: Path, fmt: str) -> Path:
    frames = []
    for colour in COLOURS:
        frame = Image.new("RGB", (48, 32), colour)
        frame.paste(WHITE, (0, 0, 8, 8))  # a marked corner, to check rotations
        frames.append(frame)
    return save(
        frames[0], path, format=fmt, save_all=True, append_images=frames[1:], duration=DURATIONS, loop=0
    )


def frames_of(path: Path) -> tuple[list[Image.Image], list[int]]:
    frames, durations = [], []
    with Image.open(path) as image:
        for index in range(image.n_frames):
            image.seek(index)
            image.load()
            durations.append(image.info["duration"])
            frames.append(image.convert("RGB"))
    return frames, durations


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
@pytest.mark.parametrize(
    ("op", "size", "corner"),
    [
        ({"op": "resize", "width": 24}, (24, 16), (1, 1)),
        ({"op": "rotate", "degrees": 90}, (32, 48), (2, 45)),
        ({"op": "grayscale"}, (48, 32), (2, 2)),
    ],
)
def test_animation_keeps_frames_and_durations(
    tmp_path: Path, fmt: str, op: dict[str, Any], size: tuple[int, int], corner: tuple[int, int]
) -> None:
    src = animation(tmp_path / "in", fmt)

    result, _ = run(src, tmp_path, op)

    assert (result.format, result.frames, result.width, result.height) == (fmt, 3, *size)
    frames, durations = frames_of(tmp_path / "out-image")
    assert durations == DURATIONS
    tolerance = 12 if fmt == "WEBP" else 8
    for frame, colour in zip(frames, COLOURS, strict=True):
        assert frame.size == size
        expected = (luminance(colour),) * 3 if op["op"] == "grayscale" else colour
        assert close(pixel(frame, (size[0] - 4, size[1] - 4)), expected, tolerance)
        assert close(pixel(frame, corner), WHITE, 40)  # the mark moved with the picture


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_to_jpeg_is_its_first_frame(tmp_path: Path, fmt: str) -> None:
    src = animation(tmp_path / "in", fmt)

    result, out = run(src, tmp_path, {"op": "resize", "width": 24}, {"op": "format", "format": "jpeg"})

    assert (result.format, result.frames, out.size) == ("JPEG", 1, (24, 16))
    assert close(pixel(out, (20, 12)), COLOURS[0], 16)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
@pytest.mark.parametrize("to", [fmt for fmt in OUTPUT_FORMATS if fmt != "jpeg"])
def test_animation_changes_format_and_stays_animated(tmp_path: Path, fmt: str, to: str) -> None:
    src = animation(tmp_path / "in", fmt)  # an APNG's durations are floats

    result, _ = run(src, tmp_path, {"op": "format", "format": to})

    assert (result.format, result.frames) == (PILLOW_FORMAT[to], 3)
    frames, durations = frames_of(tmp_path / "out-image")
    assert durations == DURATIONS
    for frame, colour in zip(frames, COLOURS, strict=True):
        assert close(pixel(frame, (40, 24)), colour, 16)
