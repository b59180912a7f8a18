"""How the input is decoded: upright by its EXIF orientation, once for several outputs, and
at a reduced JPEG draft size when the outputs are small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageDraw, ImageStat, JpegImagePlugin

from core.processing.sizes import output_size
from tests.worker.rendering import (
    BLUE,
    GREEN,
    RED,
    assert_upright,
    bands,
    close,
    load,
    pixel,
    processing,
    render_all,
    save,
    sideways_jpeg,
)
from worker import imaging


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


# orientation


@pytest.fixture
def drafts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes JPEG draft() decoded at, when it was used."""
    seen: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        answer = original(self, mode, size)
        seen.append(self.size)
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return seen


def test_every_output_of_a_rotated_jpeg_is_upright(tmp_path: Path, drafts: list[tuple[int, int]]) -> None:
    src = sideways_jpeg(tmp_path / "in.jpg")
    chosen = processing(
        outputs={
            "thumb": "thumbnail",
            "square": [{"op": "crop", "aspect": "1:1"}, {"op": "resize", "width": 150, "height": 150}],
            "grey": [{"op": "resize", "width": 200}, {"op": "grayscale"}, {"op": "format", "format": "png"}],
            "wide": [{"op": "resize", "width": 60, "height": 40, "mode": "fill"}],
        }
    )

    results = render_all(src, chosen, tmp_path)

    # Decoded at a quarter of 1200×800: still at least the thumbnail's 256 (of 1200) on every side.
    assert drafts == [(300, 200)]
    sizes = [(result.width, result.height) for result, _ in results]
    assert sizes == [(171, 256), (150, 150), (200, 300), (60, 40)]
    for (_, dst), size in zip(results[:3], sizes, strict=False):
        out = load(dst)
        assert out.size == size
        assert ExifTags.Base.Orientation not in out.getexif()
        assert_upright(out)
    # The 60×40 strip from the middle of the upright 800×1200 picture: where green meets blue.
    wide = load(results[3][1])
    assert close(pixel(wide, (30, 3)), GREEN, 30) and close(pixel(wide, (30, 36)), BLUE, 30)


def test_a_rotated_jpeg_decoded_in_full_is_upright(tmp_path: Path, drafts: list[tuple[int, int]]) -> None:
    src = sideways_jpeg(tmp_path / "in.jpg", (240, 160))
    chosen = processing(outputs={"full": [{"op": "format", "format": "png"}], "thumb": "thumbnail"})

    results = render_all(src, chosen, tmp_path)

    assert drafts == []  # the full-size output needs every pixel
    assert [(r.width, r.height) for r, _ in results] == [(160, 240), (160, 240)]
    for _, dst in results:
        assert_upright(load(dst))


# several outputs from one decode


def test_several_outputs_from_one_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened_files: list[Path] = []
    real_open = imaging.open_image

    def counting_open(path: Path, max_pixels: int) -> Image.Image:
        opened_files.append(path)
        return real_open(path, max_pixels)

    monkeypatch.setattr(imaging, "open_image", counting_open)
    src = save(bands((400, 300), [RED, GREEN, BLUE], [100, 200, 100]), tmp_path / "in.png")
    chosen = processing(
        outputs={
            "thumb": "thumbnail",
            "square": "avatar",
            "small": [{"op": "resize", "width": 40}, {"op": "format", "format": "webp"}],
            "same": [{"op": "format", "format": "jpeg"}],
        }
    )

    results = render_all(src, chosen, tmp_path)

    assert opened_files == [src]
    assert [(r.format, r.width, r.height, r.frames) for r, _ in results] == [
        ("PNG", 256, 192, 1),
        ("PNG", 512, 512, 1),
        ("WEBP", 40, 30, 1),
        ("JPEG", 400, 300, 1),
    ]
    paths = [dst for _, dst in results]
    assert len(set(paths)) == 4 and all(path.stat().st_size == r.size_bytes for r, path in results)
    assert len({path.read_bytes() for path in paths}) == 4
    for result, dst in results:
        assert load(dst).size == (result.width, result.height)


def detailed(size: tuple[int, int]) -> Image.Image:
    """A photo-like picture with detail at every scale: a gradient, shapes and fine stripes."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    width, height = size
    for index in range(12):
        left, top = index * width // 12, (index * 7 % 12) * height // 12
        draw.ellipse((left, top, left + width // 8, top + height // 8), fill=(40 * index % 256, 90, 200))
    for x in range(0, width // 3, 6):
        draw.line((x, height * 2 // 3, x, height), fill=(250, 250, 250), width=2)
    return image


def test_a_draft_decoded_thumbnail_matches_a_full_decode(
    tmp_path: Path, drafts: list[tuple[int, int]]
) -> None:
    src = save(detailed((2400, 1800)), tmp_path / "in.jpg", quality=92)
    chosen = processing(
        ops=[{"op": "resize", "width": 200, "height": 200}, {"op": "format", "format": "png"}]
    )

    ((result, dst),) = render_all(src, chosen, tmp_path)

    assert drafts == [(300, 225)]  # an eighth: still at least the 200×150 asked for
    with Image.open(src) as full:
        reference = full.resize((result.width, result.height), Image.Resampling.LANCZOS)
    out = load(dst)
    assert out.size == reference.size == (200, 150)
    assert mean_difference(out, reference) < 1.5


@pytest.mark.parametrize(
    ("size", "op"),
    [
        ((1000, 1051), {"op": "resize", "width": 256, "height": 256}),
        ((1601, 1201), {"op": "resize", "width": 300}),
        ((3001, 1003), {"op": "resize", "height": 100}),
    ],
)
def test_draft_decoding_does_not_change_the_output_size(
    tmp_path: Path, drafts: list[tuple[int, int]], size: tuple[int, int], op: dict[str, Any]
) -> None:
    # draft() rounds the reduced size up, which changes the aspect ratio a little: the size must
    # still be the one computed from the full picture (the one the API checked).
    src = save(Image.new("RGB", size, BLUE), tmp_path / "in.jpg")
    chosen = processing(ops=[op])
    expected = output_size(chosen.outputs[0].ops, *size)

    ((result, dst),) = render_all(src, chosen, tmp_path)

    assert drafts and drafts[-1] != size  # draft() really was used
    assert (result.width, result.height) == load(dst).size == expected
