"""Tests for worker.imaging: every input is generated here with Pillow, in tmp_path."""

from __future__ import annotations

import errno
import io
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageFile, JpegImagePlugin, PngImagePlugin

from core.formats import (
    DAMAGED_MESSAGE,
    ImageRejected,
    TooManyPixels,
    animation_too_large_message,
    too_many_frames_message,
    too_many_pixels_message,
)
from core.processing.operations import Watermark
from core.processing.outputs import Output
from tests import images
from worker.imaging import OUTSIDE_MESSAGE, EncoderSettings, ProcessedImage, RenderLimits, render, watermark

TEXT = "AI magic added!"
MAX_PIXELS = 50_000_000
MAX_FRAMES = 500
BLUE = (40, 90, 160)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def run(src: Path, tmp_path: Path, **overrides: Any) -> tuple[ProcessedImage, Path]:
    # No extension, like the worker's temporary path: the format must not come from the name.
    dst = tmp_path / "result.tmp"
    options: dict[str, Any] = {"text": TEXT, "max_pixels": MAX_PIXELS, "max_frames": MAX_FRAMES}
    options.update(overrides)
    return watermark(src, dst, **options), dst


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


@contextmanager
def opened(path: Path) -> Iterator[Image.Image]:
    with Image.open(path) as image:
        image.load()
        yield image


def red_bbox(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box of the clearly red pixels (lossy encoders move colours a little)."""
    red, green, blue = image.convert("RGB").split()
    mask = ImageChops.multiply(
        red.point(lambda v: 255 if v >= 170 else 0),
        ImageChops.multiply(
            green.point(lambda v: 255 if v <= 90 else 0), blue.point(lambda v: 255 if v <= 90 else 0)
        ),
    )
    return mask.getbbox()


def assert_red_top_left(image: Image.Image) -> None:
    bbox = red_bbox(image)
    assert bbox is not None, "no red text found"
    left, top, _, bottom = bbox
    assert left < image.width // 10 and top < image.height // 10
    assert bottom <= image.height // 2


def max_difference(a: Image.Image, b: Image.Image) -> int:
    extrema = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema()
    return max(high for _, high in extrema)


def bottom_right(image: Image.Image) -> Image.Image:
    return image.crop((image.width // 2, image.height // 2, image.width, image.height))


def gradient(size: tuple[int, int]) -> Image.Image:
    grey = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (grey.point(lambda v: v // 2), grey, Image.new("L", size, 160)))


# Plain formats


def test_jpeg_gets_red_text_top_left_and_the_rest_is_unchanged(tmp_path: Path) -> None:
    original = gradient((320, 240))
    src = save(original, tmp_path / "in.jpg", quality=95)
    with opened(src) as decoded_input:
        reference = decoded_input.copy()

    result, dst = run(src, tmp_path)

    assert result == ProcessedImage("JPEG", 320, 240, 1, dst.stat().st_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jpg", "result.tmp"]
    with opened(dst) as out:
        assert (out.format, out.size, out.mode) == ("JPEG", (320, 240), "RGB")
        assert_red_top_left(out)
        assert max_difference(bottom_right(out), bottom_right(reference)) <= 8


def _encoding(path: Path) -> str:
    with Image.open(path) as image:
        if image.format == "JPEG":
            return {0: "4:4:4", 2: "4:2:0"}[JpegImagePlugin.get_sampling(image)]
    return "lossless" if b"VP8L" in path.read_bytes() else "lossy"


@pytest.mark.parametrize(
    ("fmt", "size", "expected"),
    [
        ("JPEG", (240, 180), "4:4:4"),
        ("JPEG", (1000, 750), "4:2:0"),
        ("WEBP", (240, 180), "lossless"),
        ("WEBP", (1000, 750), "lossy"),
    ],
)
def test_small_text_is_encoded_without_colour_subsampling(
    tmp_path: Path, fmt: str, size: tuple[int, int], expected: str
) -> None:
    # At 12 px, 4:2:0 turns red strokes on blue into purple (red_bbox finds nothing); big pictures get
    # big text, which survives it, and the cheaper encoding.
    src = save(Image.new("RGB", size, BLUE), tmp_path / "in", format=fmt)

    _, dst = run(src, tmp_path)

    assert _encoding(dst) == expected
    with opened(dst) as out:
        assert_red_top_left(out)


def test_text_scales_with_the_image(tmp_path: Path) -> None:
    _, dst = run(save(Image.new("RGB", (200, 150), BLUE), tmp_path / "small.png"), tmp_path)
    with opened(dst) as out:
        small_box = red_bbox(out)
    _, dst = run(save(Image.new("RGB", (1600, 1200), BLUE), tmp_path / "large.png"), tmp_path)
    with opened(dst) as out:
        large_box = red_bbox(out)

    assert small_box is not None and large_box is not None
    small_height = small_box[3] - small_box[1]
    large_height = large_box[3] - large_box[1]
    assert large_height >= 4 * small_height
    assert large_box[2] < 1600 // 2  # well inside the picture, not a banner across it


def test_long_text_is_shrunk_to_fit_the_width(tmp_path: Path) -> None:
    src = save(Image.new("RGB", (400, 400), BLUE), tmp_path / "in.png")
    _, dst = run(src, tmp_path, text="Processed by imagequeue, the friendly image pipeline")
    with opened(dst) as out:
        bbox = red_bbox(out)
    assert bbox is not None
    assert bbox[2] < 400  # the last glyph ends inside the picture
    assert bbox[2] > 300  # and it was shrunk to fit, not to nothing


@pytest.mark.parametrize("size", [(1, 1), (3, 2000), (2000, 3)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_tiny_and_extreme_shapes_are_processed(tmp_path: Path, size: tuple[int, int], fmt: str) -> None:
    src = save(Image.new("RGB", size, "white"), tmp_path / "in", format=fmt)
    result, dst = run(src, tmp_path)
    assert (result.format, result.width, result.height) == (fmt, *size)
    with opened(dst) as out:
        assert out.size == size


def test_exif_orientation_is_applied_and_removed(tmp_path: Path) -> None:
    # Stored 120×80 with the left half green; orientation 6 means "rotate 90° clockwise to view".
    stored = Image.new("RGB", (120, 80), (0, 0, 255))
    stored.paste((0, 200, 0), (0, 0, 60, 80))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    src = save(stored, tmp_path / "in.jpg", exif=exif, quality=95)

    result, dst = run(src, tmp_path)

    assert (result.width, result.height) == (80, 120)
    with opened(dst) as out:
        assert out.size == (80, 120)
        assert ExifTags.Base.Orientation not in out.getexif()
        # The stored left half is now the top half.
        assert out.getpixel((60, 45)) == pytest.approx((0, 200, 0), abs=12)
        assert out.getpixel((60, 100)) == pytest.approx((0, 0, 255), abs=12)
        assert_red_top_left(out)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_broken_exif_block_does_not_reject_the_picture(tmp_path: Path, fmt: str) -> None:
    # Pillow raises SyntaxError reading this from a PNG or WebP; it spoils only the orientation.
    src = save(Image.new("RGB", (64, 48), BLUE), tmp_path / "in", format=fmt, exif=b"Exif\x00\x00not TIFF")
    result, _ = run(src, tmp_path)
    assert (result.format, result.width, result.height) == (fmt, 64, 48)


PNG_TEXT = PngImagePlugin.PngInfo()
PNG_TEXT.add_text("Author", "secret-comment")
PNG_TEXT.add_itxt("XML:com.adobe.xmp", images.XMP.decode())

METADATA_OPTIONS: dict[str, dict[str, Any]] = {
    "JPEG": {"exif": images.personal_exif(), "xmp": images.XMP, "comment": b"secret-comment"},
    "PNG": {"exif": images.personal_exif(), "pnginfo": PNG_TEXT},
    "WEBP": {"exif": images.personal_exif(), "xmp": images.XMP},
}


@pytest.mark.parametrize("fmt", sorted(METADATA_OPTIONS))
def test_personal_metadata_is_stripped_and_icc_kept(tmp_path: Path, fmt: str) -> None:
    src = save(gradient((96, 64)), tmp_path / "in", format=fmt, icc_profile=SRGB_ICC, **METADATA_OPTIONS[fmt])
    markers = [b"Jane Doe", b"CameraMaker", b"secret-xmp"] + ([b"secret-comment"] if fmt != "WEBP" else [])
    with opened(src) as original:  # the test only means something if the input carries them
        assert original.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert all(marker in src.read_bytes() for marker in markers)

    _, dst = run(src, tmp_path)

    written = dst.read_bytes()
    assert [marker for marker in markers if marker in written] == []
    with opened(dst) as out:
        assert len(out.getexif()) == 0
        assert not {"exif", "xmp", "comment", "Author", "XML:com.adobe.xmp"} & set(out.info)
        assert out.info.get("icc_profile") == SRGB_ICC


# Modes


def test_cmyk_jpeg_stays_cmyk_with_red_text_and_its_profile_when_profiles_are_kept(tmp_path: Path) -> None:
    # Pillow ships no CMYK profile; the header's colour-space field is what imaging.py checks.
    cmyk_icc = SRGB_ICC[:16] + b"CMYK" + SRGB_ICC[20:]
    # Big enough for big text, where RGB output would be subsampled 4:2:0.
    src = save(Image.new("CMYK", (640, 480), (0, 0, 0, 0)), tmp_path / "in.jpg", icc_profile=cmyk_icc)
    output = Output(name="image", ops=(Watermark(op="watermark", text=TEXT),), preset="default")
    dst = tmp_path / "result.tmp"
    limits = RenderLimits(max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES, max_output_pixels=MAX_PIXELS)

    render(src, [(output, dst)], limits=limits, encoder=EncoderSettings(keep_icc_profiles=True))

    with opened(dst) as out:
        assert out.mode == "CMYK"
        assert out.info.get("icc_profile") == cmyk_icc
        assert_red_top_left(out)
        assert max_difference(bottom_right(out), Image.new("RGB", (320, 240), "white")) <= 4
        # No chroma-style subsampling on CMYK: libjpeg would halve three channels against cyan.
        assert {(h, v) for _, h, v, _ in out.layer} == {(1, 1)}


def test_greyscale_jpeg_turns_rgb_and_drops_its_grey_profile(tmp_path: Path) -> None:
    grey_icc = SRGB_ICC[:16] + b"GRAY" + SRGB_ICC[20:]
    src = save(Image.new("L", (120, 90), 128), tmp_path / "in.jpg", icc_profile=grey_icc)

    _, dst = run(src, tmp_path)

    with opened(dst) as out:
        assert out.mode == "RGB"
        assert "icc_profile" not in out.info
        assert_red_top_left(out)
        assert out.getpixel((110, 80)) == pytest.approx((128, 128, 128), abs=4)


def test_rgba_png_keeps_its_alpha(tmp_path: Path) -> None:
    image = Image.new("RGBA", (200, 150), (0, 0, 0, 0))
    image.paste((0, 200, 0, 128), (100, 0, 200, 75))
    src = save(image, tmp_path / "in.png")

    _, dst = run(src, tmp_path)

    with opened(dst) as out:
        assert out.mode == "RGBA"
        assert out.getpixel((190, 140)) == (0, 0, 0, 0)
        assert out.getpixel((190, 10)) == (0, 200, 0, 128)
        assert_red_top_left(out)
        text_box = red_bbox(out)
        assert text_box is not None
        assert out.crop(text_box).getchannel("A").getextrema()[1] == 255  # the text itself is opaque


@pytest.mark.parametrize("transparent", [True, False])
def test_palette_png(tmp_path: Path, transparent: bool) -> None:
    image = Image.new("P", (160, 120), 0)
    image.putpalette([255, 255, 255, 0, 0, 200, 0, 150, 0])
    image.paste(1, (80, 60, 160, 120))
    image.paste(2, (0, 60, 80, 120))
    options = {"transparency": 1} if transparent else {}
    src = save(image, tmp_path / "in.png", **options)

    result, dst = run(src, tmp_path)

    assert result.format == "PNG"
    with opened(dst) as out:
        assert_red_top_left(out)
        assert out.convert("RGB").getpixel((20, 110)) == (0, 150, 0)
        if transparent:
            assert out.mode == "RGBA"
            assert out.getpixel((150, 110))[3] == 0
        else:
            assert out.mode == "RGB"
            assert out.getpixel((150, 110)) == (0, 0, 200)


def test_16_bit_greyscale_png_is_scaled_not_blown_out(tmp_path: Path) -> None:
    image = Image.new("I;16", (128, 96), 0x8000)
    src = save(image, tmp_path / "in.png")
    with opened(src) as original:
        assert original.mode.startswith("I")  # the input really is 16-bit

    _, dst = run(src, tmp_path)

    with opened(dst) as out:
        assert out.mode == "RGB"
        assert out.getpixel((120, 90)) == pytest.approx((128, 128, 128), abs=2)
        assert_red_top_left(out)


def test_one_bit_bmp(tmp_path: Path) -> None:
    src = save(Image.new("1", (100, 60), 1), tmp_path / "in.bmp")

    result, dst = run(src, tmp_path)

    assert result.format == "BMP"
    with opened(dst) as out:
        assert out.format == "BMP"
        assert_red_top_left(out)
        assert out.convert("RGB").getpixel((95, 55)) == (255, 255, 255)


def test_mpo_is_written_as_a_plain_jpeg_of_its_first_picture(tmp_path: Path) -> None:
    first, second = Image.new("RGB", (96, 64), BLUE), Image.new("RGB", (96, 64), "green")
    src = save(first, tmp_path / "in.jpg", format="MPO", save_all=True, append_images=[second])

    result, dst = run(src, tmp_path)

    assert (result.format, result.frames) == ("JPEG", 1)
    with opened(dst) as out:
        assert out.format == "JPEG"
        assert out.getpixel((90, 60)) == pytest.approx(BLUE, abs=6)


# Animations

COLOURS = [(200, 0, 200), (0, 160, 0), (0, 0, 220)]
DURATIONS = [100, 200, 300]


def frames(size: tuple[int, int] = (96, 72), mode: str = "RGB") -> list[Image.Image]:
    return [Image.new(mode, size, colour) for colour in COLOURS]


def assert_each_frame_stamped(out: Image.Image, tolerance: int) -> None:
    assert out.n_frames == len(COLOURS)
    for index, colour in enumerate(COLOURS):
        out.seek(index)
        frame = out.convert("RGB")
        assert_red_top_left(frame)
        assert frame.getpixel((frame.width - 3, frame.height - 3)) == pytest.approx(colour, abs=tolerance)


def test_animated_gif_keeps_frames_durations_and_loop(tmp_path: Path) -> None:
    first, *rest = frames()
    src = save(first, tmp_path / "in.gif", save_all=True, append_images=rest, duration=DURATIONS, loop=0)

    result, dst = run(src, tmp_path)

    assert (result.format, result.frames) == ("GIF", 3)
    with Image.open(dst) as out:
        assert out.info["loop"] == 0
        durations = []
        for index in range(out.n_frames):
            out.seek(index)
            durations.append(out.info["duration"])
        assert durations == DURATIONS
        assert_each_frame_stamped(out, tolerance=8)


def test_gif_without_loop_count_still_plays_once(tmp_path: Path) -> None:
    first, *rest = frames()
    src = save(first, tmp_path / "in.gif", save_all=True, append_images=rest, duration=DURATIONS)
    _, dst = run(src, tmp_path)
    with Image.open(dst) as out:
        assert "loop" not in out.info


def test_transparent_animated_gif(tmp_path: Path) -> None:
    first, *rest = frames(mode="RGBA")
    first.paste((0, 0, 0, 0), (48, 36, 96, 72))
    src = save(first, tmp_path / "in.gif", save_all=True, append_images=rest, duration=DURATIONS, disposal=2)

    _, dst = run(src, tmp_path)

    with Image.open(dst) as out:
        assert out.convert("RGBA").getpixel((90, 66))[3] == 0
        assert_red_top_left(out.convert("RGB"))
        # Restore-to-background: browsers would otherwise show the previous frame through any pixel
        # that turns transparent (Pillow's reader composites differently, so this is checked directly).
        for index in range(out.n_frames):
            out.seek(index)
            assert out.disposal_method == 2


def test_animated_webp_keeps_frames_durations_and_loop(tmp_path: Path) -> None:
    first, *rest = frames()
    background = (10, 20, 30, 255)
    src = save(
        first,
        tmp_path / "in.webp",
        save_all=True,
        append_images=rest,
        duration=DURATIONS,
        loop=2,
        background=background,
    )

    result, dst = run(src, tmp_path)

    assert (result.format, result.frames) == ("WEBP", 3)
    with Image.open(dst) as out:
        assert (out.info["loop"], out.info["background"]) == (2, background)
        durations = []
        for index in range(out.n_frames):
            out.seek(index)
            out.load()
            durations.append(out.info["duration"])
        assert durations == DURATIONS
        assert_each_frame_stamped(out, tolerance=12)


def test_apng_keeps_frames_durations_and_loop(tmp_path: Path) -> None:
    first, *rest = frames()
    src = save(first, tmp_path / "in.png", save_all=True, append_images=rest, duration=DURATIONS, loop=3)

    result, dst = run(src, tmp_path)

    assert (result.format, result.frames) == ("PNG", 3)
    with Image.open(dst) as out:
        assert out.info["loop"] == 3
        durations = []
        for index in range(out.n_frames):
            out.seek(index)
            durations.append(out.info["duration"])
        assert durations == DURATIONS
        assert_each_frame_stamped(out, tolerance=0)


def test_apng_default_image_stays_outside_the_animation(tmp_path: Path) -> None:
    # The first picture is what viewers without APNG support show; it has no duration.
    still, *animated = frames()
    src = save(
        still,
        tmp_path / "in.png",
        save_all=True,
        append_images=animated,
        default_image=True,
        duration=[150, 250],
    )

    _, dst = run(src, tmp_path)

    with Image.open(dst) as out:
        assert out.info.get("default_image") is True
        durations = []
        for index in range(1, out.n_frames):
            out.seek(index)
            durations.append(out.info["duration"])
        assert durations == [150, 250]
        assert_each_frame_stamped(out, tolerance=0)


def _gif_frame_offsets(data: bytes) -> list[int]:
    """Positions of the GIF's image descriptors (0x2C, then left, top, width, height as u16)."""

    def skip_sub_blocks(pos: int) -> int:
        while data[pos]:
            pos += data[pos] + 1
        return pos + 1

    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    found = []
    while data[pos] != 0x3B:
        if data[pos] == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        else:
            found.append(pos)
            local = data[pos + 9]
            pos = skip_sub_blocks(pos + 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1)
    return found


def gif_with_second_frame_at(left_top: int) -> bytes:
    first = Image.new("RGB", (32, 32), (0, 0, 200))
    second = first.copy()
    second.paste((0, 200, 0), (8, 8, 12, 12))  # Pillow writes only this 4×4 square as frame 2
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    data = bytearray(buffer.getvalue())
    descriptor = _gif_frame_offsets(bytes(data))[1]
    assert struct.unpack("<4H", data[descriptor + 1 : descriptor + 9]) == (8, 8, 4, 4)
    data[descriptor + 1 : descriptor + 5] = struct.pack("<2H", left_top, left_top)
    return bytes(data)


def test_gif_frame_beyond_the_screen_is_clipped(tmp_path: Path) -> None:
    src = tmp_path / "in.gif"
    src.write_bytes(gif_with_second_frame_at(40))  # Pillow grows its canvas to 44×44 for frame 2

    result, dst = run(src, tmp_path)

    assert (result.width, result.height, result.frames) == (32, 32, 2)
    written = dst.read_bytes()
    assert struct.unpack("<2H", written[6:10]) == (32, 32)
    for descriptor in _gif_frame_offsets(written):
        left, top, width, height = struct.unpack("<4H", written[descriptor + 1 : descriptor + 9])
        assert left + width <= 32 and top + height <= 32


def test_gif_frame_far_beyond_the_screen_is_rejected(tmp_path: Path) -> None:
    src = tmp_path / "in.gif"
    src.write_bytes(gif_with_second_frame_at(60_000))  # a 3.6-gigapixel canvas: Pillow's guard fires

    with pytest.raises(ImageRejected) as raised:
        run(src, tmp_path)

    assert str(raised.value) == OUTSIDE_MESSAGE


# Limits


def test_too_many_frames_is_rejected(tmp_path: Path) -> None:
    images = [Image.new("RGB", (8, 8), (index * 40, 0, 0)) for index in range(6)]
    src = save(images[0], tmp_path / "in.gif", save_all=True, append_images=images[1:])

    with pytest.raises(ImageRejected) as raised:
        run(src, tmp_path, max_frames=5)

    assert str(raised.value) == too_many_frames_message(6, 5) == "Animation has 6 frames; the limit is 5."
    assert not (tmp_path / "result.tmp").exists()


def test_animation_over_the_pixel_budget_is_rejected(tmp_path: Path) -> None:
    first, *rest = frames(size=(100, 100))
    src = save(first, tmp_path / "in.webp", save_all=True, append_images=rest)

    with pytest.raises(ImageRejected) as raised:
        run(src, tmp_path, max_pixels=25_000)

    assert str(raised.value) == animation_too_large_message(3, 100, 100, 25_000)
    assert "25,000 pixels" in str(raised.value)


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def test_a_pixel_bomb_header_is_refused_before_decoding(tmp_path: Path) -> None:
    src = tmp_path / "bomb.png"
    src.write_bytes(png_header_only(30_000, 30_000))
    assert src.stat().st_size < 100

    with pytest.raises(TooManyPixels) as raised:
        run(src, tmp_path, max_pixels=1_000_000)

    assert str(raised.value) == too_many_pixels_message(900_000_000, 1_000_000)
    assert "1,000,000" in str(raised.value)


# Damaged input and failing output


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    gradient((128, 96)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png() -> bytes:
    buffer = io.BytesIO()
    gradient((128, 96)).save(buffer, "PNG")
    return buffer.getvalue()


def _garbage_in_jpeg_scan() -> bytes:
    data = bytearray(_jpeg())
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    data[middle : middle + 32] = b"\xff\xd8" * 16  # start-of-image markers inside the entropy data
    return bytes(data)


def _garbage_in_png_idat() -> bytes:
    data = bytearray(_png())
    start = data.index(b"IDAT") + 10
    data[start : start + 50] = b"\xaa" * 50
    return bytes(data)


DAMAGED: dict[str, bytes] = {
    "jpeg cut in half": _jpeg()[: len(_jpeg()) // 2],
    # Decision: even a JPEG missing only its end marker is rejected (Pillow's truncated-image
    # tolerance is a process-wide switch, which a thread-pooled worker must not flip).
    "jpeg without end marker": _jpeg()[:-2],
    "jpeg with garbage in its data": _garbage_in_jpeg_scan(),
    "png cut short": _png()[: len(_png()) * 2 // 3],
    "png with a broken data chunk": _garbage_in_png_idat(),
}


@pytest.mark.parametrize("data", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_input_is_rejected_with_a_readable_message(tmp_path: Path, data: bytes) -> None:
    src = tmp_path / "in"
    src.write_bytes(data)

    with pytest.raises(ImageRejected) as raised:
        run(src, tmp_path)

    assert (
        str(raised.value)
        == DAMAGED_MESSAGE
        == "The image data is damaged or incomplete and cannot be decoded."
    )


def test_a_disk_error_while_reading_is_not_a_rejection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = save(Image.new("RGB", (32, 32), BLUE), tmp_path / "in.png")

    def failing_load(self: ImageFile.ImageFile) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ImageFile.ImageFile, "load", failing_load)
    with pytest.raises(OSError) as raised:
        run(src, tmp_path)
    assert raised.value.errno == errno.EIO


@pytest.mark.parametrize("where", ["a directory", "a missing directory"])
def test_unwritable_destination_raises_oserror_not_rejection(tmp_path: Path, where: str) -> None:
    src = save(Image.new("RGB", (32, 32), BLUE), tmp_path / "in.png")
    dst = tmp_path / "taken" if where == "a directory" else tmp_path / "missing" / "out.tmp"
    if where == "a directory":
        dst.mkdir()

    with pytest.raises(OSError) as raised:
        watermark(src, dst, text=TEXT, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)

    assert not isinstance(raised.value, ImageRejected)


# Concurrency


def test_parallel_calls_give_the_same_bytes_as_sequential_ones(tmp_path: Path) -> None:
    sources = [
        save(gradient((160, 120)), tmp_path / "a.jpg"),
        save(gradient((120, 160)).convert("RGBA"), tmp_path / "b.png"),
        save(gradient((100, 100)), tmp_path / "c.webp"),
        save(Image.new("1", (90, 70), 1), tmp_path / "d.bmp"),
    ] * 3

    def process(job: tuple[int, Path]) -> bytes:
        index, src = job
        dst = tmp_path / f"out-{index}"
        watermark(src, dst, text=TEXT, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
        return dst.read_bytes()

    jobs = list(enumerate(sources))
    sequential = [process(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(process, jobs))
    assert parallel == sequential
