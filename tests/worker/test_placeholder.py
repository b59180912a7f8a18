"""The placeholder the worker takes from its first decode (worker/placeholder.py, called by
worker.imaging.render): a ThumbHash bit for bit the reference encoder's, the dominant colour, the
oriented size; and it is reported before any output is written, from the decode the outputs use."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests import input_formats
from tests.thumbhash_decoding import aspect_ratio, decode
from tests.worker.rendering import BLUE, GREEN, LIMITS, processing, save, sideways_jpeg
from worker.imaging import EncoderSettings, render
from worker.placeholder import Placeholder, dominant_color, make_placeholder, thumbhash


def sample(mode: str, size: tuple[int, int]) -> Image.Image:
    """Blue, a yellow ellipse in the middle, a red box at the top left (fully transparent in RGBA)."""
    opaque = mode == "RGBA"
    image = Image.new(mode, size, (30, 120, 200, 255) if opaque else (30, 120, 200))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse(
        (w // 4, h // 4, w * 3 // 4, h * 3 // 4), fill=(250, 200, 40, 255) if opaque else (250, 200, 40)
    )
    draw.rectangle((0, 0, w // 3, h // 5), fill=(200, 20, 60, 0) if opaque else (200, 20, 60))
    return image


# Made by the reference encoder (rgbaToThumbHash, through the thumbhash-python 1.0.1 port) from
# `sample` images: a landscape and a portrait picture, and two with transparency.
@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [
        ("RGB", (32, 24), "9fb6055d88069898668788707b7877780999e1f14e"),
        ("RGB", (18, 32), "dfb6055c0a16687608b7778787980999e1f25e"),
        ("RGBA", (32, 32), "6086855d0a1e08988878809d98088880800841981085324565"),
        ("RGBA", (32, 20), "6096855b8a1e0898887881088881801841981085325575"),
    ],
)
def test_the_hash_is_the_reference_encoders(mode: str, size: tuple[int, int], expected: str) -> None:
    assert thumbhash(sample(mode, size)).hex() == expected


def test_the_hash_decodes_to_the_pictures_colours_and_shape() -> None:
    picture = Image.new("RGB", (1200, 600), (220, 30, 40))
    picture.paste((20, 60, 230), (600, 0, 1200, 600))

    placeholder = make_placeholder(picture, 1200, 600)

    shown = decode(placeholder["thumbhash"]).convert("RGB")
    assert shown.width > shown.height and aspect_ratio(base64.b64decode(placeholder["thumbhash"])) > 1.5
    left, right = shown.getpixel((2, shown.height // 2)), shown.getpixel((shown.width - 3, shown.height // 2))
    assert left[0] > 150 and left[2] < 100, f"the left half shows red: {left}"
    assert right[2] > 150 and right[0] < 100, f"the right half shows blue: {right}"
    assert (placeholder["width"], placeholder["height"]) == (1200, 600)


def test_transparency_is_kept_in_the_hash() -> None:
    picture = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(picture).rectangle((16, 16, 47, 47), fill=(40, 180, 60, 255))

    shown = decode(make_placeholder(picture, 64, 64)["thumbhash"])

    assert shown.getpixel((0, 0))[3] < 80, "the transparent corner stays see-through"
    centre = shown.getpixel((shown.width // 2, shown.height // 2))
    assert centre[3] > 200 and centre[1] > centre[0] and centre[1] > centre[2]


def test_the_dominant_colour_is_the_commonest_one_not_the_average() -> None:
    picture = Image.new("RGB", (32, 32), (200, 30, 40))
    ImageDraw.Draw(picture).rectangle((0, 0, 31, 9), fill=(10, 10, 240))  # a third of it blue

    assert dominant_color(picture) == "#c81e28"


def test_the_dominant_colour_ignores_transparent_pixels() -> None:
    picture = Image.new("RGBA", (32, 32), (255, 255, 255, 0))
    ImageDraw.Draw(picture).rectangle((0, 0, 9, 9), fill=(0, 128, 0, 255))

    assert dominant_color(picture) == "#008000"


def render_reporting(src: Path, tmp_path: Path, ops: list[dict]) -> tuple[list[Placeholder], list[bool]]:
    """Render one output, noting each report and whether the output existed when it came."""
    (output,) = processing(ops=ops).outputs
    dst = tmp_path / "out"
    reports: list[Placeholder] = []
    existed: list[bool] = []

    def report(placeholder: Placeholder) -> None:
        reports.append(placeholder)
        existed.append(dst.exists())

    render(src, [(output, dst)], limits=LIMITS, report=report)
    return reports, existed


def test_it_is_reported_once_before_the_output_is_written_with_the_oriented_size(tmp_path: Path) -> None:
    # Stored 1200 × 800, left half green and right half blue, shown rotated: 800 × 1200, green on top.
    src = sideways_jpeg(tmp_path / "sideways.jpg")

    reports, existed = render_reporting(src, tmp_path, [{"op": "resize", "width": 100, "height": 100}])

    (placeholder,) = reports
    assert existed == [False], "reported before the output was written"
    assert (placeholder["width"], placeholder["height"]) == (800, 1200)
    shown = decode(placeholder["thumbhash"]).convert("RGB")
    assert shown.height > shown.width
    top, bottom = shown.getpixel((shown.width // 2, 2)), shown.getpixel((shown.width // 2, shown.height - 3))
    assert top[1] > top[2] and bottom[2] > bottom[1], f"green on top, blue below: {top}, {bottom}"
    assert _near(placeholder["dominant_color"], [GREEN, BLUE]), "half green, half blue: either"


def test_an_animation_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (60, 40), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    src = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)

    (placeholder,), _ = render_reporting(src, tmp_path, [{"op": "resize", "width": 30, "height": 30}])

    assert _near(placeholder["dominant_color"], [(250, 0, 0)])
    assert (placeholder["width"], placeholder["height"]) == (60, 40)


P3_RED = Image.new("RGB", (40, 30), input_formats.P3_OF_SRGB_RED)
CMYK_CYAN = Image.new("CMYK", (40, 30), (255, 0, 0, 0))


@pytest.mark.parametrize(
    ("picture", "profile", "srgb"),
    [
        (P3_RED, input_formats.display_p3_profile(), (255, 0, 0)),
        (CMYK_CYAN, input_formats.cmyk_press_profile(), input_formats.PRESS_CYAN),
    ],
    ids=["display-p3", "press-cmyk"],
)
def test_the_placeholder_is_srgb_when_profiles_are_kept(
    tmp_path: Path, picture: Image.Image, profile: bytes, srgb: tuple[int, int, int]
) -> None:
    # KEEP_ICC_PROFILES keeps the outputs' profiles, which viewers apply; the placeholder is a CSS
    # colour and a canvas, which have none: it showed a P3 red dull, a press cyan as (0, 255, 255).
    src = save(picture, tmp_path / "in.tif", icc_profile=profile)
    (output,) = processing(ops=[{"op": "flip", "direction": "vertical"}]).outputs
    reports: list[Placeholder] = []

    render(
        src,
        [(output, tmp_path / "out")],
        limits=LIMITS,
        encoder=EncoderSettings(keep_icc_profiles=True),
        report=reports.append,
    )

    (placeholder,) = reports
    assert _near(placeholder["dominant_color"], [srgb], tolerance=10), placeholder["dominant_color"]


def _near(colour: str, candidates: list[tuple[int, int, int]], tolerance: int = 24) -> bool:
    value = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return any(all(abs(a - b) <= tolerance for a, b in zip(value, c, strict=True)) for c in candidates)
