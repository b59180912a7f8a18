"""Tests for worker.operations and the presets, through worker.imaging.render (the worker's own path):
every input is generated here with Pillow, in tmp_path, and every op gets a pixel check that a wrong
result would fail."""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageDraw, ImageFilter, ImageStat, JpegImagePlugin

from core.formats import ImageRejected
from core.processing.forms import resolve
from core.processing.operations import OUTPUT_FORMATS, POSITIONS, ProcessingInvalid
from core.processing.outputs import Processing
from core.processing.presets import BUILTIN_PRESETS
from core.processing.sizes import output_size, rotated_size
from tests import images
from worker import imaging
from worker.imaging import OUTPUT_TOO_LARGE, EncoderSettings, ProcessedImage, RenderLimits, render
from worker.operations import CROP_OUTSIDE

TEXT = "imagequeue"
LIMITS = RenderLimits(max_pixels=50_000_000, max_frames=50, max_output_pixels=50_000_000)
RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}


# Helpers


def processing(**fields: Any) -> Processing:
    """What the API stores for these form fields (ops and outputs given as Python, sent as JSON)."""
    return resolve(
        preset=fields.get("preset"),
        ops=json.dumps(fields["ops"]) if "ops" in fields else None,
        outputs=json.dumps(fields["outputs"]) if "outputs" in fields else None,
        presets=BUILTIN_PRESETS,
        watermark_text=TEXT,
    )


def render_all(
    src: Path,
    chosen: Processing,
    tmp_path: Path,
    *,
    limits: RenderLimits = LIMITS,
    encoder: EncoderSettings | None = None,
) -> list[tuple[ProcessedImage, Path]]:
    # No extension, like the worker's temporary paths: the format must not come from the name.
    pairs = [(output, tmp_path / f"out-{output.name}") for output in chosen.outputs]
    results = render(src, pairs, limits=limits, encoder=encoder)
    return [(result, dst) for result, (_, dst) in zip(results, pairs, strict=True)]


def run(
    src: Path, tmp_path: Path, *ops: dict[str, Any], **options: Any
) -> tuple[ProcessedImage, Image.Image]:
    """One output with these ops; its result and its decoded picture."""
    ((result, dst),) = render_all(src, processing(ops=list(ops)), tmp_path, **options)
    return result, load(dst)


def load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def colour_bbox(
    image: Image.Image, colour: tuple[int, int, int], tolerance: int = 60
) -> tuple[int, ...] | None:
    """Bounding box of the pixels within `tolerance` of `colour` in every channel."""
    rgb = image.convert("RGB")
    difference = ImageChops.difference(rgb, Image.new("RGB", rgb.size, colour))
    masks = [channel.point(lambda v: 255 if v <= tolerance else 0) for channel in difference.split()]
    return ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2]).getbbox()


def assert_all(image: Image.Image, colour: tuple[int, ...], tolerance: int = 6) -> None:
    """Every pixel within `tolerance` of `colour`."""
    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    for (low, high), wanted in zip(bands, colour, strict=True):
        assert wanted - tolerance <= low and high <= wanted + tolerance, (extrema, colour)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    return value if isinstance(value, tuple) else (value,)  # type: ignore[return-value]


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False)
    )


def bands(size: tuple[int, int], colours: list[tuple[int, int, int]], widths: list[int]) -> Image.Image:
    """Vertical bands of `colours`, `widths` pixels wide from left to right."""
    image = Image.new("RGB", size)
    left = 0
    for colour, width in zip(colours, widths, strict=True):
        image.paste(colour, (left, 0, left + width, size[1]))
        left += width
    return image


def marked(size: tuple[int, int]) -> Image.Image:
    """White with a red 10×10 square in the top-left corner."""
    image = Image.new("RGB", size, WHITE)
    image.paste(RED, (0, 0, 10, 10))
    return image


def red_corner(image: Image.Image) -> str:
    """Which corner holds the red mark."""
    width, height = image.size
    corners = {
        "top-left": (2, 2),
        "top-right": (width - 3, 2),
        "bottom-left": (2, height - 3),
        "bottom-right": (width - 3, height - 3),
    }
    found = [name for name, xy in corners.items() if close(pixel(image.convert("RGB"), xy), RED, 40)]
    assert len(found) == 1, found
    return found[0]


def coordinates(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """Red = x, green = y: every pixel says where it came from."""
    across = Image.linear_gradient("L").transpose(Image.Transpose.TRANSPOSE)
    down = Image.linear_gradient("L")
    return Image.merge("RGB", (across, down, Image.new("L", (256, 256)))).crop((0, 0, *size))


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


# resize


def test_resize_fit_keeps_the_aspect_and_the_picture(tmp_path: Path) -> None:
    src = save(bands((200, 100), [RED, BLUE], [100, 100]), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 50, "height": 50})

    assert (result.width, result.height, out.size) == (50, 25, (50, 25))
    assert close(pixel(out, (5, 12)), RED) and close(pixel(out, (45, 12)), BLUE)


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ({"width": 50}, (50, 25)),
        ({"height": 50}, (100, 50)),
        ({"width": 500, "height": 500}, (200, 100)),  # never enlarged
        ({"width": 300}, (200, 100)),
        ({"width": 500, "height": 500, "enlarge": True}, (500, 250)),
        ({"height": 300, "enlarge": True}, (600, 300)),
    ],
)
def test_resize_fit_sizes(tmp_path: Path, op: dict[str, Any], expected: tuple[int, int]) -> None:
    src = save(bands((200, 100), [RED, BLUE], [100, 100]), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", **op})

    assert out.size == (result.width, result.height) == expected
    assert close(pixel(out, (2, 2)), RED) and close(pixel(out, (out.width - 3, out.height - 3)), BLUE)


@pytest.mark.parametrize("orientation", ["wide", "tall"])
def test_resize_fill_crops_the_centre(tmp_path: Path, orientation: str) -> None:
    # Red | green | blue: the outer bands lie outside the centred square and must disappear.
    image = bands((300, 100), [RED, GREEN, BLUE], [80, 140, 80])
    if orientation == "tall":
        image = image.transpose(Image.Transpose.ROTATE_90)
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 50, "height": 50, "mode": "fill"})

    assert (result.width, result.height) == out.size == (50, 50)
    assert_all(out, GREEN)


def test_resize_fill_to_a_wider_box(tmp_path: Path) -> None:
    # 100×300 into 100×50: the middle sixth (rows 125-175) of a picture whose top and bottom differ.
    image = bands((300, 100), [RED, GREEN, BLUE], [120, 60, 120]).transpose(Image.Transpose.ROTATE_270)
    src = save(image, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "resize", "width": 100, "height": 50, "mode": "fill"})

    assert out.size == (100, 50)
    assert_all(out, GREEN)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_resize_fill_where_floating_point_overshoots_the_frame(tmp_path: Path, mode: str) -> None:
    # 80 / (80 / 61) is 61.000000000000007: the full-width side of the cut overshoots the frame.
    src = save(Image.new(mode, (61, 43)), tmp_path / "in.png")
    result, out = run(src, tmp_path, {"op": "resize", "width": 80, "height": 20, "mode": "fill"})
    assert (result.width, result.height) == out.size == (80, 20)


def test_resize_exact_stretches(tmp_path: Path) -> None:
    image = Image.new("RGB", (200, 100), BLUE)
    image.paste(RED, (0, 0, 100, 50))
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 40, "height": 120, "mode": "exact"})

    assert (result.width, result.height) == out.size == (40, 120)
    # The red quarter is still a quarter: 20×60 in the top left.
    assert colour_bbox(out, RED, 30) == (0, 0, 20, 60)


# crop


def test_crop_box_takes_exactly_those_pixels(tmp_path: Path) -> None:
    src = save(coordinates(), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "crop", "left": 10, "top": 20, "width": 30, "height": 40})

    assert (result.width, result.height) == out.size == (30, 40)
    assert pixel(out, (0, 0)) == (10, 20, 0)
    assert pixel(out, (29, 39)) == (39, 59, 0)
    assert pixel(out, (7, 11)) == (17, 31, 0)


def test_crop_box_refers_to_the_picture_at_that_step(tmp_path: Path) -> None:
    src = save(coordinates(), tmp_path / "in.png")

    _, out = run(
        src,
        tmp_path,
        {"op": "rotate", "degrees": 90},  # counter-clockwise: the top edge becomes the left edge
        {"op": "crop", "left": 0, "top": 250, "width": 6, "height": 6},
    )

    # After the turn, (0, 250) shows the source pixel at x = 5, y = 0.
    assert pixel(out, (0, 0)) == (5, 0, 0)


@pytest.mark.parametrize(
    "box",
    [
        {"left": 250, "top": 0, "width": 10, "height": 10},
        {"left": 0, "top": 100, "width": 10, "height": 200},
        {"left": 300, "top": 300, "width": 1, "height": 1},
    ],
)
def test_crop_box_outside_the_picture_is_rejected_readably(tmp_path: Path, box: dict[str, int]) -> None:
    src = save(coordinates(), tmp_path / "in.png")

    with pytest.raises(ImageRejected) as raised:
        run(src, tmp_path, {"op": "crop", **box})

    corners = (box["left"], box["top"], box["left"] + box["width"], box["top"] + box["height"])
    assert str(raised.value) == CROP_OUTSIDE.format(box=corners, width=256, height=256)
    assert "256×256 pixels" in str(raised.value)


def test_crop_box_exactly_the_picture_is_fine(tmp_path: Path) -> None:
    src = save(coordinates((64, 48)), tmp_path / "in.png")
    _, out = run(src, tmp_path, {"op": "crop", "left": 0, "top": 0, "width": 64, "height": 48})
    assert out.size == (64, 48) and pixel(out, (63, 47)) == (63, 47, 0)


@pytest.mark.parametrize(
    ("size", "aspect", "expected", "corner"),
    [
        ((300, 100), "1:1", (100, 100), (100, 0)),
        ((100, 300), "1:1", (100, 100), (0, 100)),
        ((256, 256), "16:9", (256, 144), (0, 56)),
        ((256, 256), "9:16", (144, 256), (56, 0)),
        ((200, 100), "2:1", (200, 100), (0, 0)),
    ],
)
def test_crop_aspect_is_centred(
    tmp_path: Path, size: tuple[int, int], aspect: str, expected: tuple[int, int], corner: tuple[int, int]
) -> None:
    image = (
        coordinates((256, 256)).resize((max(size), max(size)), Image.Resampling.NEAREST).crop((0, 0, *size))
    )
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "crop", "aspect": aspect})

    assert (result.width, result.height) == out.size == expected
    assert pixel(out, (0, 0)) == pixel(image, corner)
    assert pixel(out, (expected[0] - 1, expected[1] - 1)) == pixel(
        image, (corner[0] + expected[0] - 1, corner[1] + expected[1] - 1)
    )


# rotate (counter-clockwise) and flip


@pytest.mark.parametrize(
    ("ops", "size", "corner"),
    [
        ([{"op": "rotate", "degrees": 90}], (40, 60), "bottom-left"),
        ([{"op": "rotate", "degrees": 180}], (60, 40), "bottom-right"),
        ([{"op": "rotate", "degrees": 270}], (40, 60), "top-right"),
        ([{"op": "rotate", "degrees": -90}], (40, 60), "top-right"),
        ([{"op": "rotate", "degrees": 360}], (60, 40), "top-left"),
        ([{"op": "flip", "direction": "horizontal"}], (60, 40), "top-right"),
        ([{"op": "flip", "direction": "vertical"}], (60, 40), "bottom-left"),
        (
            [{"op": "flip", "direction": "vertical"}, {"op": "flip", "direction": "horizontal"}],
            (60, 40),
            "bottom-right",
        ),
    ],
)
def test_quarter_turns_and_flips_move_the_marked_corner(
    tmp_path: Path, ops: list[dict[str, Any]], size: tuple[int, int], corner: str
) -> None:
    src = save(marked((60, 40)), tmp_path / "in.png")

    result, out = run(src, tmp_path, *ops)

    assert (result.width, result.height) == out.size == size
    assert red_corner(out) == corner
    # Exact: a quarter turn or a flip moves pixels, it does not resample them.
    assert colour_bbox(out, RED, 0) is not None
    assert len(out.getcolors() or []) == 2


def test_rotate_45_grows_the_canvas_with_white_corners(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 60), BLUE), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "rotate", "degrees": 45})

    assert out.mode == "RGB"
    assert out.size == (result.width, result.height) == rotated_size(45, 100, 60)
    assert out.width > 100 and out.height > 60
    for xy in ((0, 0), (out.width - 1, 0), (0, out.height - 1), (out.width - 1, out.height - 1)):
        assert pixel(out, xy) == WHITE
    assert pixel(out, (out.width // 2, out.height // 2)) == BLUE


def test_rotate_45_on_rgba_leaves_transparent_corners(tmp_path: Path) -> None:
    src = save(Image.new("RGBA", (100, 60), (*BLUE, 255)), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "rotate", "degrees": 45})

    assert out.mode == "RGBA"
    for xy in ((0, 0), (out.width - 1, 0), (0, out.height - 1), (out.width - 1, out.height - 1)):
        assert pixel(out, xy)[3] == 0
    assert pixel(out, (out.width // 2, out.height // 2)) == (*BLUE, 255)


def test_rotate_is_counter_clockwise_at_any_angle(tmp_path: Path) -> None:
    # At 30° counter-clockwise the top-left corner moves down the left side: the red mark ends up
    # in the left half, below where the top edge of the canvas is.
    src = save(marked((100, 100)), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "rotate", "degrees": 30})

    box = colour_bbox(out, RED, 40)
    assert box is not None
    assert box[2] <= out.width // 2
    assert box[1] >= out.height // 6


# grayscale


def test_grayscale_is_luminance(tmp_path: Path) -> None:
    image = bands((60, 20), [(200, 100, 50), (0, 0, 255), (0, 255, 0)], [20, 20, 20])
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "grayscale"})

    assert out.mode == "L" and result.format == "PNG"
    # ITU-R 601: 0.299 R + 0.587 G + 0.114 B.
    assert pixel(out, (10, 10)) == pytest.approx((124,), abs=1)
    assert pixel(out, (30, 10)) == pytest.approx((29,), abs=1)
    assert pixel(out, (50, 10)) == pytest.approx((150,), abs=1)


def test_grayscale_keeps_alpha(tmp_path: Path) -> None:
    image = Image.new("RGBA", (40, 20), (200, 100, 50, 128))
    image.paste((0, 0, 0, 0), (20, 0, 40, 20))
    src = save(image, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "grayscale"})

    assert out.mode == "LA"
    assert pixel(out, (5, 5)) == pytest.approx((124, 128), abs=1)
    assert pixel(out, (30, 5))[1] == 0


def test_grayscale_jpeg_stays_jpeg(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (64, 48), (200, 100, 50)), tmp_path / "in.jpg", quality=95)

    result, out = run(src, tmp_path, {"op": "grayscale"})

    assert (result.format, out.format, out.mode) == ("JPEG", "JPEG", "L")
    assert pixel(out, (30, 20)) == pytest.approx((124,), abs=3)


# blur and sharpen


def edge(size: tuple[int, int] = (80, 20), low: int = 0, high: int = 255) -> Image.Image:
    image = Image.new("L", size, low)
    image.paste(high, (size[0] // 2, 0, *size))
    return image


def row(image: Image.Image, y: int = 10) -> list[int]:
    return [image.getpixel((x, y)) for x in range(image.width)]  # type: ignore[misc]


@pytest.mark.parametrize("radius", [1, 4])
def test_blur_softens_an_edge(tmp_path: Path, radius: float) -> None:
    src = save(edge(), tmp_path / "in.png")
    assert set(row(load(src))) == {0, 255}

    _, out = run(src, tmp_path, {"op": "blur", "radius": radius})

    values = row(out)
    between = [x for x, value in enumerate(values) if 10 < value < 245]
    assert between, "no intermediate values: nothing was blurred"
    assert min(between) < 40 <= max(between)  # the ramp straddles the edge at x = 40
    assert values[0] == 0 and values[-1] == 255  # far from the edge nothing changes


def test_a_bigger_blur_radius_softens_more(tmp_path: Path) -> None:
    src = save(edge(), tmp_path / "in.png")
    spans = []
    for radius in (1, 4):
        _, out = run(src, tmp_path, {"op": "blur", "radius": radius})
        spans.append(sum(1 for value in row(out) if 10 < value < 245))
    assert spans[1] > 2 * spans[0]


@pytest.mark.parametrize("radius", [0, -1, 100.5])
def test_blur_radius_bounds(radius: float) -> None:
    with pytest.raises(ProcessingInvalid, match=r"\[0\]\.radius"):
        processing(ops=[{"op": "blur", "radius": radius}])


def test_sharpen_raises_edge_contrast(tmp_path: Path) -> None:
    soft = edge(low=90, high=160).filter(ImageFilter.GaussianBlur(2))
    src = save(soft, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "sharpen", "radius": 2, "percent": 200, "threshold": 0})

    before, after = row(soft), row(out)

    def steepest(values: list[int]) -> int:
        return max(abs(b - a) for a, b in itertools.pairwise(values))

    assert steepest(after) > steepest(before)
    # Unsharp masking overshoots on both sides of the edge.
    assert min(after) < 90 - 5 and max(after) > 160 + 5
    assert (after[0], after[-1]) == (90, 160)


def test_sharpen_threshold_leaves_small_differences_alone(tmp_path: Path) -> None:
    # A soft step of 20: the unsharp mask's differences stay under 10, yet would change pixels at 0.
    soft = edge(low=100, high=120).filter(ImageFilter.GaussianBlur(2))
    src = save(soft, tmp_path / "in.png")

    _, kept = run(src, tmp_path, {"op": "sharpen", "threshold": 10})
    _, sharpened = run(src, tmp_path, {"op": "sharpen", "threshold": 0})

    assert row(kept) == row(soft)
    assert row(sharpened) != row(soft)


# watermark


def _third(position: str) -> tuple[int, int]:
    """(column, row) of the 3×3 grid where text at `position` belongs."""
    column = 0 if position.endswith("left") else 2 if position.endswith("right") else 1
    line = 0 if position.startswith("top") else 2 if position.startswith("bottom") else 1
    return column, line


@pytest.mark.parametrize("position", POSITIONS)
def test_watermark_lands_at_its_position(tmp_path: Path, position: str) -> None:
    src = save(Image.new("RGB", (300, 300), BLUE), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "watermark", "text": "Mark", "size": 30, "position": position})

    box = colour_bbox(out, RED)
    assert box is not None
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    assert (int(centre[0] // 100), int(centre[1] // 100)) == _third(position)
    # Inside the picture, within a margin of the edges it is placed against.
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 300 and box[3] <= 300
    if "left" in position:
        assert box[0] < 20
    if "right" in position:
        assert box[2] > 280
    if position.startswith("top"):
        assert box[1] < 25
    if position.startswith("bottom"):
        assert box[3] > 280


def test_watermark_size_is_the_font_size(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (400, 300), BLUE), tmp_path / "in.png")
    heights = []
    for size in (20, 60):
        _, out = run(src, tmp_path, {"op": "watermark", "text": "HH", "size": size})
        box = colour_bbox(out, RED)
        assert box is not None
        heights.append(box[3] - box[1])
    assert heights[1] == pytest.approx(3 * heights[0], rel=0.2)
    assert 10 <= heights[0] <= 20


def test_watermark_colour(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (200, 100), BLACK), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "watermark", "text": "Mark", "size": 30, "color": "#00ff00"})

    assert colour_bbox(out, (0, 255, 0), 10) is not None
    assert colour_bbox(out, RED, 100) is None
    assert out.getextrema()[0] == (0, 0)  # not a trace of the default red


def test_watermark_opacity_blends(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (300, 150), BLUE), tmp_path / "in.png")

    _, opaque = run(src, tmp_path, {"op": "watermark", "text": "MMM", "size": 80})
    _, half = run(src, tmp_path, {"op": "watermark", "text": "MMM", "size": 80, "opacity": 0.5})

    # In the strokes' solid cores, red over blue: full red, or halfway between.
    assert opaque.getextrema()[0][1] == 255
    assert half.getextrema()[0][1] == pytest.approx(128, abs=2)
    assert colour_bbox(half, (128, 0, 127), 2) is not None
    assert half.getextrema()[2][0] == pytest.approx(127, abs=2)  # the blue is never more than half gone


def test_watermark_on_grey_turns_the_picture_to_colour(tmp_path: Path) -> None:
    src = save(Image.new("L", (200, 100), 128), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "watermark", "text": "Mark", "size": 30})

    assert out.mode == "RGB"
    assert colour_bbox(out, RED) is not None
    assert pixel(out, (190, 90)) == (128, 128, 128)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_watermark_draws_on_a_copy_when_the_frame_feeds_another_output(tmp_path: Path, fmt: str) -> None:
    src = save(Image.new("RGB", (300, 200), BLUE), tmp_path / "in", format=fmt, quality=95)
    chosen = processing(
        outputs={
            "top": [{"op": "watermark", "text": "TOP", "size": 40, "position": "top-left"}],
            "plain": [{"op": "format", "format": "png"}],
            "bottom": [{"op": "watermark", "text": "BOTTOM", "size": 40, "position": "bottom-right"}],
        }
    )

    (_, top), (_, plain), (_, bottom) = render_all(src, chosen, tmp_path)

    top_box, bottom_box = colour_bbox(load(top), RED), colour_bbox(load(bottom), RED)
    assert top_box is not None and top_box[3] < 100
    assert colour_bbox(load(plain), RED) is None
    # The last output may draw on the decoded frame, but must still not show the first's stamp.
    assert bottom_box is not None and bottom_box[1] > 100


def test_a_kept_stamp_comes_out_the_same_every_time_and_from_every_thread(tmp_path: Path) -> None:
    """The rendered text is kept between images of one size: reused, never drawn on, never mixed up."""
    src = save(Image.new("RGB", (300, 200), BLUE), tmp_path / "in.png")
    stamp = {"op": "watermark", "text": "Kept", "size": 40, "position": "center"}

    def stamped(name: str, op: dict[str, Any]) -> Image.Image:
        folder = tmp_path / name
        folder.mkdir()
        return run(src, folder, op)[1]

    first = stamped("first", stamp)
    with ThreadPoolExecutor(max_workers=4) as threads:
        repeats = list(threads.map(lambda index: stamped(f"again-{index}", stamp), range(16)))
    other_text = stamped("other", {**stamp, "text": "Else"})

    assert colour_bbox(first, RED) is not None
    assert all(ImageChops.difference(first, repeat).getbbox() is None for repeat in repeats)
    assert ImageChops.difference(first, other_text).getbbox() is not None


def test_default_watermark_text_comes_from_the_upload(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (300, 200), BLUE), tmp_path / "in.png")
    _, with_default = run(src, tmp_path, {"op": "watermark", "size": 30})
    _, explicit = run(src, tmp_path, {"op": "watermark", "size": 30, "text": TEXT})
    assert ImageChops.difference(with_default, explicit).getbbox() is None


# format


def _quality_sizes(src: Path, tmp_path: Path, fmt: str) -> list[int]:
    return [
        run(src, tmp_path, {"op": "format", "format": fmt, "quality": quality})[0].size_bytes
        for quality in (20, 95)
    ]


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_format_writes_that_format(tmp_path: Path, fmt: str) -> None:
    image = bands((96, 64), [RED, GREEN, BLUE], [32, 32, 32])
    src = save(image, tmp_path / "in.bmp")

    result, out = run(src, tmp_path, {"op": "format", "format": fmt})

    assert (result.format, out.format) == (PILLOW_FORMAT[fmt], PILLOW_FORMAT[fmt])
    assert (result.width, result.height, result.frames) == (96, 64, 1)
    assert result.size_bytes == (tmp_path / "out-image").stat().st_size
    tolerance = 0 if fmt == "png" else 40
    for x, colour in ((16, RED), (48, GREEN), (80, BLUE)):
        assert close(pixel(out.convert("RGB"), (x, 32)), colour, tolerance)


@pytest.mark.parametrize("fmt", [fmt for fmt in OUTPUT_FORMATS if fmt != "png"])
def test_format_quality_changes_the_size(tmp_path: Path, fmt: str) -> None:
    noisy = Image.effect_noise((128, 96), 60).convert("RGB")
    src = save(noisy, tmp_path / "in.png")

    low, high = _quality_sizes(src, tmp_path, fmt)

    assert low * 1.5 < high


def test_rgba_to_jpeg_is_flattened_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (90, 30), (0, 0, 0, 0))
    image.paste((*RED, 255), (30, 0, 60, 30))
    image.paste((0, 0, 0, 128), (60, 0, 90, 30))
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "format", "format": "jpeg", "quality": 95})

    assert (result.format, out.mode) == ("JPEG", "RGB")
    assert close(pixel(out, (15, 15)), WHITE, 3)
    assert close(pixel(out, (45, 15)), RED, 8)
    assert close(pixel(out, (75, 15)), (127, 127, 127), 4)


@pytest.mark.parametrize("fmt", [fmt for fmt in OUTPUT_FORMATS if fmt != "jpeg"])
def test_alpha_survives_formats_that_have_it(tmp_path: Path, fmt: str) -> None:
    image = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    image.paste((*RED, 255), (32, 0, 64, 32))
    src = save(image, tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "format", "format": fmt})

    assert out.mode == "RGBA"
    assert pixel(out, (8, 16))[3] == 0
    assert close(pixel(out, (48, 16)), (*RED, 255), 30)


def test_without_format_the_input_format_is_kept(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (64, 48), BLUE), tmp_path / "in", format="WEBP")
    result, out = run(src, tmp_path, {"op": "resize", "width": 32})
    assert (result.format, out.format, out.size) == ("WEBP", "WEBP", (32, 24))


# presets


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4000×3000 (12 MP), left half green and right half blue, with a red corner mark."""
    image = Image.new("RGB", (4000, 3000), BLUE)
    image.paste(GREEN, (0, 0, 2000, 3000))
    image.paste(RED, (0, 0, 400, 400))
    return save(image, tmp_path_factory.mktemp("big") / "in.jpg", quality=90)


def preset(name: str, src: Path, tmp_path: Path) -> tuple[ProcessedImage, Image.Image]:
    chosen = processing(preset=name)
    assert chosen.outputs[0].preset == name
    ((result, dst),) = render_all(src, chosen, tmp_path)
    return result, load(dst)


def test_web_preset(tmp_path: Path, big_jpeg: Path) -> None:
    result, out = preset("web", big_jpeg, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == ("JPEG", "JPEG", "RGB", (1920, 1440))
    assert (result.width, result.height) == (1920, 1440)
    assert close(pixel(out, (50, 50)), RED, 10)
    assert close(pixel(out, (300, 1000)), GREEN, 10) and close(pixel(out, (1500, 1000)), BLUE, 10)


def test_web_preset_makes_a_png_a_jpeg(tmp_path: Path) -> None:
    src = save(Image.new("RGBA", (200, 100), (*RED, 255)), tmp_path / "in.png")
    result, out = preset("web", src, tmp_path)
    assert (result.format, out.mode, out.size) == ("JPEG", "RGB", (200, 100))  # never enlarged


def test_thumbnail_preset(tmp_path: Path, big_jpeg: Path) -> None:
    result, out = preset("thumbnail", big_jpeg, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == ("JPEG", "JPEG", "RGB", (256, 192))
    assert close(pixel(out, (5, 5)), RED, 12)
    assert close(pixel(out, (60, 150)), GREEN, 12) and close(pixel(out, (200, 150)), BLUE, 12)


def test_thumbnail_preset_never_enlarges(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 300), BLUE), tmp_path / "in.png")
    result, out = preset("thumbnail", src, tmp_path)
    assert (result.format, out.size) == ("PNG", (85, 256))
    src = save(Image.new("RGB", (100, 80), BLUE), tmp_path / "small.png")
    assert preset("thumbnail", src, tmp_path)[1].size == (100, 80)


def test_avatar_preset(tmp_path: Path) -> None:
    # 800×600: the centred 600×600 square drops the 100-pixel red and blue bands on each side.
    src = save(bands((800, 600), [RED, GREEN, BLUE], [100, 600, 100]), tmp_path / "in.png")

    result, out = preset("avatar", src, tmp_path)

    assert (result.format, out.mode, out.size) == ("PNG", "RGB", (512, 512))
    assert_all(out, GREEN, tolerance=2)


def test_avatar_preset_on_a_tall_jpeg(tmp_path: Path) -> None:
    image = bands((800, 600), [RED, GREEN, BLUE], [100, 600, 100]).transpose(Image.Transpose.ROTATE_90)
    assert image.size == (600, 800)
    src = save(image, tmp_path / "in.jpg", quality=95)
    result, out = preset("avatar", src, tmp_path)
    assert (result.format, out.size) == ("JPEG", (512, 512))
    assert colour_bbox(out, RED, 80) is None and colour_bbox(out, BLUE, 80) is None


def test_webp_preset_keeps_the_size(tmp_path: Path) -> None:
    src = save(bands((300, 200), [RED, BLUE], [150, 150]), tmp_path / "in.png")

    result, out = preset("webp", src, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == ("WEBP", "WEBP", "RGB", (300, 200))
    assert close(pixel(out, (20, 100)), RED, 20) and close(pixel(out, (280, 100)), BLUE, 20)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_preset(tmp_path: Path, fmt: str) -> None:
    src = save(Image.new("RGB", (120, 80), (200, 100, 50)), tmp_path / "in", format=fmt, quality=95)

    result, out = preset("grayscale", src, tmp_path)

    assert (result.format, out.format, out.mode, out.size) == (fmt, fmt, "L", (120, 80))
    assert pixel(out, (60, 40)) == pytest.approx((124,), abs=3)


def test_default_preset(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (320, 240), BLUE), tmp_path / "in.jpg", quality=95)

    result, out = preset("default", src, tmp_path)

    assert (result.format, out.mode, out.size) == ("JPEG", "RGB", (320, 240))
    box = colour_bbox(out, RED)
    assert box is not None
    assert box[0] < 32 and box[1] < 24 and box[3] <= 120
    assert close(pixel(out, (300, 220)), BLUE, 8)


def test_every_builtin_preset_is_tested() -> None:
    tested = {
        "web": test_web_preset,
        "thumbnail": test_thumbnail_preset,
        "avatar": test_avatar_preset,
        "webp": test_webp_preset_keeps_the_size,
        "grayscale": test_grayscale_preset,
        "default": test_default_preset,
    }
    assert set(tested) == set(BUILTIN_PRESETS), "a built-in preset without its test here"


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


def sideways_jpeg(path: Path, size: tuple[int, int] = (1200, 800), **options: Any) -> Path:
    """Stored left half green, right half blue, with orientation 6 ("rotate 90° clockwise to view"):
    upright, green is on top."""
    exif = options.pop("exif", Image.Exif())
    exif[ExifTags.Base.Orientation] = 6
    stored = bands(size, [GREEN, BLUE], [size[0] // 2, size[0] - size[0] // 2])
    return save(stored, path, exif=exif, quality=92, **options)


def assert_upright(image: Image.Image) -> None:
    rgb = image.convert("RGB")
    width, height = rgb.size
    assert height > width or width == height
    top, bottom = pixel(rgb, (width // 2, height // 8)), pixel(rgb, (width // 2, height * 7 // 8))
    if image.mode == "L":
        assert top[0] == pytest.approx(94, abs=8) and bottom[0] == pytest.approx(29, abs=8)
    else:
        assert close(top, GREEN, 20) and close(bottom, BLUE, 20)


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


# metadata


MARKERS = [b"Jane Doe", b"CameraMaker", b"secret-xmp", b"secret-comment"]
EVERY_FORMAT = {fmt: [{"op": "format", "format": fmt}] for fmt in OUTPUT_FORMATS}


def metadata_jpeg(path: Path) -> Path:
    src = sideways_jpeg(
        path,
        (96, 64),
        exif=images.personal_exif(),
        xmp=images.XMP,
        comment=b"secret-comment",
        icc_profile=SRGB_ICC,
    )
    data = src.read_bytes()
    assert all(marker in data for marker in MARKERS)  # the input really carries them
    return src


def test_metadata_is_stripped_from_every_output(tmp_path: Path) -> None:
    src = metadata_jpeg(tmp_path / "in.jpg")
    chosen = processing(outputs={"same": "thumbnail", "grey": "grayscale", **EVERY_FORMAT})

    results = render_all(src, chosen, tmp_path)

    for (_, dst), output in zip(results, chosen.outputs, strict=True):
        written = dst.read_bytes()
        assert [marker for marker in MARKERS if marker in written] == [], output.name
        out = load(dst)
        assert len(out.getexif()) == 0, output.name
        assert not {"exif", "xmp", "XML:com.adobe.xmp", "comment"} & set(out.info), output.name
        assert_upright(out)
        if out.mode == "L":
            assert "icc_profile" not in out.info  # an RGB profile does not describe grey pixels
        else:
            assert out.info.get("icc_profile") == SRGB_ICC, output.name


def test_keep_metadata_keeps_exif_without_orientation(tmp_path: Path) -> None:
    src = metadata_jpeg(tmp_path / "in.jpg")
    chosen = processing(outputs={"same": "thumbnail", **EVERY_FORMAT})

    results = render_all(src, chosen, tmp_path, encoder=EncoderSettings(keep_metadata=True))

    for (_, dst), output in zip(results, chosen.outputs, strict=True):
        out = load(dst)
        exif = out.getexif()
        assert exif.get(ExifTags.Base.Artist) == "Jane Doe", output.name
        assert exif.get(ExifTags.Base.Make) == "CameraMaker", output.name
        assert exif.get_ifd(ExifTags.IFD.GPSInfo).get(ExifTags.GPS.GPSLatitudeRef) == "N", output.name
        assert ExifTags.Base.Orientation not in exif, output.name  # applied, so no viewer turns it again
        assert_upright(out)
        assert b"secret-xmp" not in dst.read_bytes() and b"secret-comment" not in dst.read_bytes()
        assert out.info.get("icc_profile") == SRGB_ICC, output.name


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


# animations

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


def luminance(colour: tuple[int, int, int]) -> int:
    red, green, blue = colour
    return round(0.299 * red + 0.587 * green + 0.114 * blue)


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


# modes


def cmyk_jpeg(path: Path) -> Path:
    image = Image.new("CMYK", (80, 60), (0, 0, 0, 0))  # white
    image.paste((0, 255, 255, 0), (0, 0, 40, 60))  # red on the left
    return save(image, path, quality=95)


def test_cmyk_jpeg_resize(tmp_path: Path) -> None:
    result, out = run(cmyk_jpeg(tmp_path / "in.jpg"), tmp_path, {"op": "resize", "width": 40})
    assert (result.format, out.mode, out.size) == ("JPEG", "CMYK", (40, 30))
    assert close(pixel(out.convert("RGB"), (5, 15)), RED, 16)
    assert close(pixel(out.convert("RGB"), (35, 15)), WHITE, 8)


def test_cmyk_jpeg_grayscale(tmp_path: Path) -> None:
    result, out = run(cmyk_jpeg(tmp_path / "in.jpg"), tmp_path, {"op": "grayscale"})
    assert (result.format, out.mode) == ("JPEG", "L")
    assert pixel(out, (10, 30)) == pytest.approx((luminance(RED),), abs=6)
    assert pixel(out, (70, 30)) == pytest.approx((255,), abs=4)


def test_cmyk_jpeg_to_webp(tmp_path: Path) -> None:
    result, out = run(cmyk_jpeg(tmp_path / "in.jpg"), tmp_path, {"op": "format", "format": "webp"})
    assert (result.format, out.mode) == ("WEBP", "RGB")
    assert close(pixel(out, (10, 30)), RED, 24) and close(pixel(out, (70, 30)), WHITE, 12)


def test_16_bit_png(tmp_path: Path) -> None:
    image = Image.new("I;16", (64, 48), 0x8000)
    image.paste(0xFFFF, (32, 0, 64, 48))
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "resize", "width": 32}, {"op": "rotate", "degrees": 180})

    assert (result.format, out.mode, out.size) == ("PNG", "L", (32, 24))
    # Turned half way: the white half is now on the left.
    assert pixel(out, (4, 12)) == pytest.approx((255,), abs=1)
    assert pixel(out, (28, 12)) == pytest.approx((128,), abs=1)


def palette_png(path: Path) -> Path:
    image = Image.new("P", (80, 40), 0)
    image.putpalette([255, 255, 255, *RED, *BLUE])
    image.paste(1, (0, 0, 40, 40))
    image.paste(2, (40, 0, 60, 40))
    return save(image, path, transparency=0)  # the white right quarter is transparent


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    result, out = run(palette_png(tmp_path / "in.png"), tmp_path, {"op": "resize", "width": 40})
    assert (result.format, out.mode, out.size) == ("PNG", "RGBA", (40, 20))
    assert close(pixel(out, (5, 10)), (*RED, 255), 4)
    assert close(pixel(out, (25, 10)), (*BLUE, 255), 4)
    assert pixel(out, (38, 10))[3] == 0


def test_palette_png_to_jpeg_is_flattened_on_white(tmp_path: Path) -> None:
    result, out = run(palette_png(tmp_path / "in.png"), tmp_path, {"op": "format", "format": "jpeg"})
    assert (result.format, out.mode) == ("JPEG", "RGB")
    assert close(pixel(out, (75, 20)), WHITE, 4) and close(pixel(out, (10, 20)), RED, 10)


def la_png(path: Path) -> Path:
    image = Image.new("LA", (60, 40), (200, 255))
    image.paste((50, 0), (30, 0, 60, 40))  # the right half is transparent
    return save(image, path)


def test_la_png_resize_and_rotate_keep_alpha(tmp_path: Path) -> None:
    result, out = run(
        la_png(tmp_path / "in.png"), tmp_path, {"op": "resize", "width": 30}, {"op": "rotate", "degrees": 45}
    )
    assert (result.format, out.mode) == ("PNG", "LA")
    assert pixel(out, (0, 0))[1] == 0  # a new corner is transparent
    grey, alpha = out.split()
    opaque = alpha.point(lambda value: 255 if value == 255 else 0)
    assert ImageStat.Stat(grey, opaque).mean[0] == pytest.approx(200, abs=2)


def test_la_png_grayscale_and_coloured_watermark(tmp_path: Path) -> None:
    _, grey = run(la_png(tmp_path / "in.png"), tmp_path, {"op": "grayscale"})
    assert grey.mode == "LA" and pixel(grey, (10, 20)) == (200, 255) and pixel(grey, (50, 20))[1] == 0
    _, stamped = run(la_png(tmp_path / "in.png"), tmp_path, {"op": "watermark", "text": "M", "size": 20})
    assert stamped.mode == "RGBA"
    assert colour_bbox(stamped, RED) is not None


# output limit


def test_an_output_over_the_pixel_limit_is_rejected_by_name(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 100), BLUE), tmp_path / "in.png")
    chosen = processing(
        outputs={
            "fine": [{"op": "resize", "width": 500, "height": 500, "mode": "exact"}],
            "poster": [{"op": "resize", "width": 1000, "height": 800, "mode": "exact"}],
        }
    )
    limits = RenderLimits(
        max_pixels=LIMITS.max_pixels, max_frames=LIMITS.max_frames, max_output_pixels=500_000
    )

    with pytest.raises(ImageRejected) as raised:
        render_all(src, chosen, tmp_path, limits=limits)

    message = str(raised.value)
    assert message == OUTPUT_TOO_LARGE.format(name="poster", width=1000, height=800, limit=500_000)
    assert message == "Output 'poster' would be 1,000×800 pixels; the limit is 500,000 pixels."


def test_the_output_limit_uses_the_oriented_size(tmp_path: Path) -> None:
    # Stored 300×100, upright 100×300: a crop 100 wide and 300 tall fits only once turned.
    src = sideways_jpeg(tmp_path / "in.jpg", (300, 100))
    chosen = processing(ops=[{"op": "crop", "left": 0, "top": 0, "width": 100, "height": 300}])
    limits = RenderLimits(
        max_pixels=LIMITS.max_pixels, max_frames=LIMITS.max_frames, max_output_pixels=30_000
    )

    ((result, _),) = render_all(src, chosen, tmp_path, limits=limits)

    assert (result.width, result.height) == (100, 300)


# Encoders that refuse


def test_a_webp_partition_overflow_falls_back_to_a_slower_method(tmp_path: Path) -> None:
    # At quality 90, libwebp's fastest methods cannot fit a busy 24 MP photo's headers into the
    # format's first partition ("encoding error 6"); method 2 can.
    src = tmp_path / "in.jpg"
    src.write_bytes(images.photo_like(5664, 4248))
    with Image.open(src) as decoded, pytest.raises(ValueError, match="encoding error 6"):
        decoded.save(tmp_path / "plain.webp", quality=90, method=0)  # the failure being worked around

    result, out = run(src, tmp_path, {"op": "format", "format": "webp", "quality": 90})

    assert (result.format, out.size) == ("WEBP", (5664, 4248))


def test_an_encoder_that_refuses_the_picture_is_a_rejection_not_a_retry(tmp_path: Path) -> None:
    # JPEG cannot hold a side over 65,535 pixels: the encoder refuses every time.
    src = save(Image.new("RGB", (70_000, 2), "white"), tmp_path / "wide.png")

    with pytest.raises(ImageRejected, match=r"^The result could not be written as JPEG \("):
        run(src, tmp_path, {"op": "format", "format": "jpeg"})
