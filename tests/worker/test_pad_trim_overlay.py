"""`resize` mode `pad`, `pad`, `trim`, `overlay` and `format`'s `max_bytes`, through the worker's
render, checked by pixels and sizes."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from config import ConfigError
from core.formats import ImageRejected
from core.processing.operations import MAX_BYTES_FLOOR_QUALITY
from tests import input_formats
from tests.subjects import MARK, framed, logo
from tests.worker.rendering import (
    BLUE,
    RED,
    WHITE,
    assert_all,
    close,
    colour_bbox,
    pixel,
    processing,
    render_all,
    run,
    save,
)
from worker.imaging import MAX_BYTES_UNREACHABLE, WATERMARK_IMAGE_GONE
from worker.overlays import MAX_WATERMARK_PIXELS, check_watermark_images

# resize mode "pad" and the pad op


def test_resize_pad_fits_then_extends_with_white_for_jpeg(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (400, 200), RED), tmp_path / "in.jpg", quality=95)

    result, out = run(src, tmp_path, {"op": "resize", "width": 300, "height": 300, "mode": "pad"})

    assert (result.format, out.size) == ("JPEG", (300, 300))
    # Fitted to 300 × 150, centred: rows 75-224 red, the rest white.
    assert_all(out.crop((0, 0, 300, 72)), WHITE, 4)
    assert_all(out.crop((0, 228, 300, 300)), WHITE, 4)
    assert_all(out.crop((0, 78, 300, 222)), RED, 12)


def test_resize_pad_is_transparent_where_the_format_has_alpha(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (400, 200), RED), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "resize", "width": 300, "height": 300, "mode": "pad"})

    assert out.mode == "RGBA"
    assert pixel(out, (150, 10))[3] == 0 and pixel(out, (150, 290))[3] == 0
    assert pixel(out, (150, 150)) == (*RED, 255)
    assert out.getchannel("A").getbbox() == (0, 75, 300, 225)


def test_resize_pad_with_a_background_and_no_enlarging(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 50), RED), tmp_path / "in.png")

    op = {"op": "resize", "width": 300, "height": 300, "mode": "pad", "background": "#0000ff"}
    _, out = run(src, tmp_path, op, {"op": "format", "format": "png"})

    assert out.size == (300, 300) and out.mode == "RGB"
    assert colour_bbox(out, RED, 0) == (100, 125, 200, 175), "never enlarged: 100 × 50 in the middle"
    assert pixel(out, (0, 0)) == BLUE and pixel(out, (299, 299)) == BLUE


def test_the_pad_op_adds_its_margin_on_every_side(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (100, 50), RED), tmp_path / "in.jpg", quality=95)

    _, white = run(src, tmp_path, {"op": "pad", "margin": 10})
    _, coloured = run(
        src, tmp_path, {"op": "pad", "margin": 10, "background": "blue"}, {"op": "format", "format": "png"}
    )
    _, clear = run(
        src, tmp_path, {"op": "pad", "margin": 10}, {"op": "format", "format": "webp", "quality": 100}
    )

    assert white.size == coloured.size == clear.size == (120, 70)
    assert_all(white.crop((0, 0, 120, 5)), WHITE, 20)  # JPEG: the red's chroma bleeds a little
    assert colour_bbox(coloured, RED, 30) == (10, 10, 110, 60)
    assert pixel(coloured, (5, 35)) == BLUE
    assert clear.mode == "RGBA" and clear.getchannel("A").getbbox() == (10, 10, 110, 60)


# trim


def test_trim_cuts_exactly_the_uniform_border(tmp_path: Path) -> None:
    src = save(framed((200, 100), (30, 20, 80, 60), WHITE), tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "trim"})

    assert (result.width, result.height) == (50, 40)
    assert_all(out, (0, 0, 0), 0)


def test_trim_threshold_decides_what_counts_as_border(tmp_path: Path) -> None:
    image = framed((200, 100), (30, 20, 80, 60), WHITE)
    image.paste((245, 245, 245), (0, 0, 200, 10))  # a near-white strip along the top
    image.paste(WHITE, (0, 0, 1, 1))  # the corner that names the border colour
    src = save(image, tmp_path / "in.png")

    _, default = run(src, tmp_path, {"op": "trim"})
    _, strict = run(src, tmp_path, {"op": "trim", "threshold": 5})

    assert default.size == (50, 40), "10 away from white is border by default"
    assert strict.size == (200, 60), "with threshold 5 the strip is content"


def test_trim_cuts_a_transparent_border_whatever_colour_it_hides(tmp_path: Path) -> None:
    # Fully transparent pixels look alike whatever their colour channels hold (an editor's erased
    # pixels, a lossy encoder's guesses): compared as they were, this border was all "content".
    image = Image.effect_noise((200, 100), 100).convert("RGBA")
    image.putalpha(0)
    image.paste((*BLUE, 255), (50, 30, 150, 70))
    src = save(image, tmp_path / "in.png")

    result, out = run(src, tmp_path, {"op": "trim"})

    assert (result.width, result.height) == (100, 40)
    assert_all(out, (*BLUE, 255), 0)


def test_trim_of_a_plain_picture_leaves_it_as_it_is(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (64, 32), BLUE), tmp_path / "in.png")

    _, out = run(src, tmp_path, {"op": "trim"}, {"op": "resize", "width": 32})

    assert out.size == (32, 16)


def test_trim_then_crop_refers_to_the_trimmed_picture(tmp_path: Path) -> None:
    image = framed((200, 100), (30, 20, 130, 70), WHITE)
    image.paste(RED, (30, 20, 40, 30))
    src = save(image, tmp_path / "in.png")

    _, out = run(
        src, tmp_path, {"op": "trim"}, {"op": "crop", "left": 0, "top": 0, "width": 10, "height": 10}
    )

    assert_all(out, RED, 0)


# overlay


@pytest.fixture
def marks(tmp_path: Path) -> dict[str, Path]:
    wide = tmp_path / "logo.png"
    logo((40, 20)).save(wide)
    return {"logo": wide}


def white(tmp_path: Path, size: tuple[int, int] = (200, 100)) -> Path:
    return save(Image.new("RGB", size, WHITE), tmp_path / "white.png")


@pytest.mark.parametrize(
    ("position", "box"),
    [("bottom-right", (155, 75, 195, 95)), ("top-left", (5, 5, 45, 25)), ("center", (80, 40, 120, 60)),
     ("top", (80, 5, 120, 25)), ("left", (5, 40, 45, 60))],
)  # fmt: skip
def test_overlay_lands_at_its_position(
    tmp_path: Path, marks: dict[str, Path], position: str, box: tuple[int, ...]
) -> None:
    op = {"op": "overlay", "image": "logo", "position": position, "margin": 5}

    _, out = run(white(tmp_path), tmp_path, op, watermark_images=marks)

    assert colour_bbox(out, MARK, 0) == box


@pytest.mark.parametrize("position", ["top-left", "top", "bottom-left", "bottom-right"])
@pytest.mark.parametrize("margin", [100, 150, 16_384])
def test_overlay_with_a_margin_past_half_the_picture_stays_on_it(
    tmp_path: Path, marks: dict[str, Path], position: str, margin: int
) -> None:
    # A preset's margin meets pictures of every size (a thumbnail of 200 x 100 here): the mark was
    # put past the far edge and the task failed with Pillow's "Coordinate 'lower' is less than
    # 'upper'", or drawn nowhere.
    op = {"op": "overlay", "image": "logo", "position": position, "margin": margin}

    result, out = run(white(tmp_path), tmp_path, op, watermark_images=marks)

    assert (result.width, result.height) == (200, 100)
    assert colour_bbox(out, MARK, 0) is not None, "the mark is on the picture"


def test_overlay_opacity_blends_with_the_picture(tmp_path: Path, marks: dict[str, Path]) -> None:
    op = {"op": "overlay", "image": "logo", "position": "center", "opacity": 0.5}

    _, out = run(white(tmp_path), tmp_path, op, watermark_images=marks)

    blended = tuple(round(255 + (mark - 255) * 0.5) for mark in MARK)
    assert close(pixel(out, (100, 50)), blended, 2), pixel(out, (100, 50))
    assert pixel(out, (2, 2)) == WHITE


def test_overlay_scale_is_a_fraction_of_the_picture_width(tmp_path: Path, marks: dict[str, Path]) -> None:
    op = {"op": "overlay", "image": "logo", "position": "top-left", "scale": 0.5, "margin": 0}

    _, out = run(white(tmp_path), tmp_path, op, watermark_images=marks)

    assert colour_bbox(out, MARK, 8) == (0, 0, 100, 50)


def test_overlay_tiles_over_the_whole_picture(tmp_path: Path, marks: dict[str, Path]) -> None:
    op = {"op": "overlay", "image": "logo", "tile": True, "margin": 10}

    _, out = run(white(tmp_path), tmp_path, op, watermark_images=marks)

    # Cells of 50 × 30 from the top left: marks at x 0, 50, 100, 150 and y 0, 30, 60, 90.
    for x in (0, 50, 100, 150):
        for y in (0, 30, 60, 90):
            assert pixel(out, (x + 1, y + 1)) == MARK, (x, y)
            assert pixel(out, (x + 45, y + 1)) == WHITE, "the gap between tiles"
    assert colour_bbox(out, MARK, 0) == (0, 0, 190, 100)


_TILE_IN_A_CHILD = """
import sys
from pathlib import Path
from tests.worker.rendering import processing, render_all
ops = [{"op": "overlay", "image": "logo", "tile": True, "margin": 16384}]
chosen = processing(ops=ops, watermark_images=["logo"])
render_all(Path(sys.argv[1]), chosen, Path(sys.argv[2]), watermark_images={"logo": Path(sys.argv[3])})
# VmHWM: this process's own peak (ru_maxrss would include the parent's, from before the exec).
print(int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) // 1024)
"""


def test_overlay_tiles_a_huge_margin_without_a_huge_cell(tmp_path: Path, marks: dict[str, Path]) -> None:
    # The margin is the gap between tiles: a 16,384-pixel gap made a 1 GB cell for a 200 × 100
    # picture, which no cost check sees. Only the first tile lands on the picture.
    done = subprocess.run(
        [sys.executable, "-c", _TILE_IN_A_CHILD, str(white(tmp_path)), str(tmp_path), str(marks["logo"])],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )

    assert int(done.stdout) < 200, "peak MiB"
    out = Image.open(tmp_path / "out-image")
    assert colour_bbox(out, MARK, 0) == (0, 0, 40, 20)


def test_a_heic_watermark_image_passes_the_start_up_check(tmp_path: Path) -> None:
    # In a fresh process, as a worker starts: HEIF was registered by the first render only, so the
    # check refused a HEIC as "Unsupported file type" (a type the same message says to upload).
    path = tmp_path / "seal.heic"
    path.write_bytes(input_formats.heic(logo((40, 20))))
    check = (
        "import sys, pathlib, worker.overlays as o; "
        "o.check_watermark_images({'seal': pathlib.Path(sys.argv[1])})"
    )

    done = subprocess.run(
        [sys.executable, "-c", check, str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]


def test_overlay_on_a_transparent_picture_composites(tmp_path: Path, marks: dict[str, Path]) -> None:
    src = save(Image.new("RGBA", (200, 100), (0, 0, 0, 0)), tmp_path / "clear.png")
    op = {"op": "overlay", "image": "logo", "position": "top-left", "margin": 0, "opacity": 0.5}

    _, out = run(src, tmp_path, op, watermark_images=marks)

    assert out.mode == "RGBA"
    red, green, blue, alpha = pixel(out, (10, 10))
    assert close((red, green, blue), MARK, 2) and alpha == pytest.approx(128, abs=1)
    assert pixel(out, (100, 50))[3] == 0


def test_an_overlay_image_this_worker_lacks_fails_the_output_in_words(
    tmp_path: Path, marks: dict[str, Path]
) -> None:
    chosen = processing(ops=[{"op": "overlay", "image": "logo"}], watermark_images=["logo"])

    with pytest.raises(ImageRejected) as raised:
        render_all(white(tmp_path), chosen, tmp_path, watermark_images={"seal": marks["logo"]})

    assert str(raised.value) == WATERMARK_IMAGE_GONE.format(name="image", index=0, image="logo")


def test_watermark_images_are_checked_at_start(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    side = int(MAX_WATERMARK_PIXELS**0.5) + 1
    Image.new("L", (side, side)).save(huge)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")

    with pytest.raises(ConfigError, match=r"WATERMARK_IMAGES: 'missing' .*No such file"):
        check_watermark_images({"missing": tmp_path / "nope.png"})
    with pytest.raises(ConfigError, match=r"WATERMARK_IMAGES: 'huge' .*the limit is 4,000,000"):
        check_watermark_images({"huge": huge})
    with pytest.raises(ConfigError, match=r"WATERMARK_IMAGES: 'broken'"):
        check_watermark_images({"broken": broken})


# format's max_bytes


def noisy(tmp_path: Path, size: tuple[int, int] = (400, 300)) -> Path:
    rng = random.Random(15)
    image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    return save(image, tmp_path / "noisy.png")


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_max_bytes_lands_under_the_size(tmp_path: Path, fmt: str) -> None:
    src = noisy(tmp_path)
    floor = run(src, tmp_path, {"op": "format", "format": fmt, "quality": MAX_BYTES_FLOOR_QUALITY})[
        0
    ].size_bytes
    full, full_image = run(src, tmp_path, {"op": "format", "format": fmt})
    limit = (floor + full.size_bytes) // 2

    result, out = run(src, tmp_path, {"op": "format", "format": fmt, "max_bytes": limit})

    assert floor < result.size_bytes <= limit < full.size_bytes, (
        "the highest quality that fits, not the floor"
    )
    assert (tmp_path / "out-image").stat().st_size == result.size_bytes
    assert out.size == full_image.size


def test_max_bytes_already_met_is_one_plain_encode(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (64, 64), RED), tmp_path / "in.png")

    run(src, tmp_path, {"op": "format", "format": "jpeg", "quality": 80})
    plain_bytes = (tmp_path / "out-image").read_bytes()
    result, _ = run(src, tmp_path, {"op": "format", "format": "jpeg", "quality": 80, "max_bytes": 100_000})

    assert (tmp_path / "out-image").read_bytes() == plain_bytes and result.size_bytes == len(plain_bytes)


def test_max_bytes_out_of_reach_fails_with_the_smallest_size(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected) as raised:
        run(noisy(tmp_path), tmp_path, {"op": "format", "format": "jpeg", "max_bytes": 1000})

    message = str(raised.value)
    head, _, smallest = message.partition("; the smallest it reached was ")
    assert head == MAX_BYTES_UNREACHABLE.split("; ")[0].format(
        name="image", format="JPEG", max_bytes=1000, ceiling=90, floor=MAX_BYTES_FLOOR_QUALITY
    )
    size, quality = re.fullmatch(r"([\d,]+) bytes, at quality (\d+)\.", smallest).groups()  # type: ignore[union-attr]
    assert int(size.replace(",", "")) > 1000 and MAX_BYTES_FLOOR_QUALITY <= int(quality) <= 90
    assert not (tmp_path / "out-image").exists(), "nothing is written"


def test_an_animation_is_trimmed_alike_in_every_frame(tmp_path: Path) -> None:
    # The black box moves; the cut is the first frame's, so the frames keep one size.
    frames = [framed((100, 60), (10 + shift, 10, 50 + shift, 40), WHITE) for shift in (0, 5, 10)]
    src = tmp_path / "moving.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, loop=0)

    result, _ = run(src, tmp_path, {"op": "trim"})

    assert (result.frames, result.width, result.height) == (3, 40, 30)
    with Image.open(tmp_path / "out-image") as out:
        out.seek(2)
        assert pixel(out.convert("RGB"), (2, 15)) == WHITE, "the last frame's box moved right within the cut"
