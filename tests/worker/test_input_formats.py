"""worker.imaging on AVIF, HEIC and TIFF inputs, and on pictures in other colour spaces: pixels in
the right place, colours as sRGB, the output format chosen for formats the service does not write."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageCms

from core.formats import DAMAGED_MESSAGE, ImageRejected
from core.processing.operations import OPS
from core.processing.outputs import Output
from core.processing.presets import BUILTIN_PRESETS
from tests import input_formats
from tests.images import photo
from worker.imaging import EncoderSettings, ProcessedImage, RenderLimits, render

LIMITS = RenderLimits(max_pixels=50_000_000, max_frames=500, max_output_pixels=50_000_000)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def layout(width: int = 64, height: int = 32) -> Image.Image:
    """Red, with a blue block at the top left: where it lands shows the orientation."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (0, 0, width // 4, height // 2))
    return image


def rendered(
    tmp_path: Path, data: bytes, ops: list[dict[str, Any]] | None = None, **encoder: Any
) -> tuple[ProcessedImage, Image.Image]:
    src, dst = tmp_path / "input", tmp_path / "output"
    src.write_bytes(data)
    output = Output(
        name="image", ops=tuple(OPS.validate_python(ops or [{"op": "flip", "direction": "vertical"}]))
    )
    (result,) = render(src, [(output, dst)], limits=LIMITS, encoder=EncoderSettings(**encoder))
    image = Image.open(dst)
    image.load()
    return result, image


def near(actual: Any, expected: tuple[int, ...], tolerance: int = 8) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


UPRIGHT = [{"op": "rotate", "degrees": 0}]


def test_a_heic_becomes_a_jpeg_with_its_pixels_in_place(tmp_path: Path) -> None:
    result, out = rendered(tmp_path, input_formats.heic(layout()), UPRIGHT)
    assert (result.format, out.format, out.size) == ("JPEG", "JPEG", (64, 32))
    assert near(out.getpixel((2, 2)), BLUE) and near(out.getpixel((60, 28)), RED)


def test_a_heic_turned_by_its_irot_is_turned_once(tmp_path: Path) -> None:
    # pillow-heif writes EXIF orientation 6 as `irot` and keeps the EXIF: both say "turn", once.
    exif = Image.Exif()
    exif[0x0112] = 6
    _, out = rendered(tmp_path, input_formats.heic(layout(), exif=exif.tobytes()), UPRIGHT)
    assert out.size == (32, 64)
    # Turned 90° clockwise, the top-left blue block is now at the top right.
    assert near(out.getpixel((29, 2)), BLUE) and near(out.getpixel((2, 2)), RED)


def test_a_heic_with_transparency_becomes_a_png(tmp_path: Path) -> None:
    image = layout().convert("RGBA")
    image.paste((0, 0, 0, 0), (32, 0, 64, 32))
    result, out = rendered(tmp_path, input_formats.heic(image), UPRIGHT)
    assert (result.format, out.mode) == ("PNG", "RGBA")
    assert out.getpixel((50, 10))[3] == 0 and out.getpixel((2, 2))[3] == 255


def test_a_format_op_still_decides_for_a_heic(tmp_path: Path) -> None:
    result, out = rendered(tmp_path, input_formats.heic(layout()), [{"op": "format", "format": "webp"}])
    assert (result.format, out.format) == ("WEBP", "WEBP")


def test_an_avif_stays_avif_with_its_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    result, out = rendered(tmp_path, input_formats.avif(layout(), exif=exif.tobytes()), UPRIGHT)
    assert (result.format, out.size) == ("AVIF", (32, 64))
    assert near(out.getpixel((29, 2)), BLUE, 16) and near(out.getpixel((2, 2)), RED, 16)


def test_an_animated_avif_keeps_its_frames(tmp_path: Path) -> None:
    frames = [layout(), layout().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    result, out = rendered(tmp_path, input_formats.animated_avif(frames), UPRIGHT)
    assert (result.format, result.frames) == ("AVIF", 2)
    out.seek(1)
    assert near(out.convert("RGB").getpixel((62, 2)), BLUE, 16)


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate", "jpeg"])
def test_a_tiff_of_each_compression_becomes_a_jpeg(tmp_path: Path, compression: str | None) -> None:
    result, out = rendered(tmp_path, input_formats.tiff(layout(), compression=compression), UPRIGHT)
    assert (result.format, out.size) == ("JPEG", (64, 32))
    assert near(out.getpixel((2, 2)), BLUE) and near(out.getpixel((60, 28)), RED)


def test_a_16_bit_tiff_is_scaled_to_8_bits(tmp_path: Path) -> None:
    _, out = rendered(tmp_path, input_formats.tiff_16_bit_rgb(40, 30, (10, 200, 30)), UPRIGHT)
    assert near(out.getpixel((20, 15)), (10, 200, 30), 4)
    _, grey = rendered(tmp_path, input_formats.tiff(Image.new("I;16", (40, 30), 30_000)), UPRIGHT)
    assert abs(grey.getpixel((20, 15)) - 30_000 // 256) <= 2  # type: ignore[operator]


def test_a_big_endian_16_bit_grey_tiff_is_scaled_to_8_bits(tmp_path: Path) -> None:
    # Pillow opens a Motorola-order 16-bit grey TIFF as I;16B, which point() has no table for.
    _, grey = rendered(tmp_path, input_formats.tiff(Image.new("I;16B", (40, 30), 30_000)), UPRIGHT)
    assert abs(grey.getpixel((20, 15)) - 30_000 // 256) <= 2  # type: ignore[operator]


def test_a_greyscale_tiff_stays_grey(tmp_path: Path) -> None:
    _, out = rendered(
        tmp_path, input_formats.tiff(Image.new("L", (40, 30), 100), compression="tiff_lzw"), UPRIGHT
    )
    assert out.mode == "L" and abs(out.getpixel((5, 5)) - 100) <= 2  # type: ignore[operator]


def test_a_multi_page_tiff_gives_its_first_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (40, 30), colour) for colour in (RED, BLUE, (0, 255, 0))]
    data = input_formats.tiff(pages[0], save_all=True, append_images=pages[1:])
    result, out = rendered(tmp_path, data, UPRIGHT)
    assert result.frames == 1 and near(out.getpixel((20, 15)), RED)


def test_a_tiff_cut_in_its_pixel_data_fails_as_damaged(tmp_path: Path) -> None:
    data = input_formats.tiff_16_bit_rgb(200, 200, (10, 20, 30))
    with pytest.raises(ImageRejected) as refused:
        rendered(tmp_path, data[: len(data) // 2], UPRIGHT)
    assert str(refused.value) == DAMAGED_MESSAGE


def test_a_heic_whose_picture_data_is_garbage_fails_with_a_reason(tmp_path: Path) -> None:
    data = input_formats.heic(layout(256, 256))
    # The picture's HEVC data, zeroed: the boxes still say where it is and how long.
    start = data.index(b"mdat") + 4
    garbled = data[:start] + bytes(len(data) - start)
    with pytest.raises(ImageRejected) as refused:
        rendered(tmp_path, garbled, UPRIGHT)
    assert str(refused.value) == DAMAGED_MESSAGE


# Colour


P3_RED = Image.new("RGB", (64, 32), input_formats.P3_OF_SRGB_RED)


@pytest.mark.parametrize(
    "data",
    [
        input_formats.heic(P3_RED, icc_profile=input_formats.display_p3_profile()),
        input_formats.avif(P3_RED, icc_profile=input_formats.display_p3_profile()),
        input_formats.tiff(P3_RED, icc_profile=input_formats.display_p3_profile()),
        input_formats.encode(P3_RED, "JPEG", quality=95, icc_profile=input_formats.display_p3_profile()),
    ],
    ids=["heic", "avif", "tiff", "jpeg"],
)
def test_a_display_p3_red_lands_as_the_srgb_red_it_is(tmp_path: Path, data: bytes) -> None:
    _, out = rendered(tmp_path, data, UPRIGHT)
    assert near(out.convert("RGB").getpixel((30, 15)), RED, 6)
    assert "icc_profile" not in out.info, "untagged: sRGB, as browsers assume"


def test_an_adobe_rgb_picture_is_converted_to_srgb(tmp_path: Path) -> None:
    # sRGB's red is (219, 0, 0) in Adobe RGB.
    data = input_formats.tiff(
        Image.new("RGB", (40, 30), (219, 0, 0)), icc_profile=input_formats.adobe_rgb_profile()
    )
    _, out = rendered(tmp_path, data, UPRIGHT)
    assert near(out.getpixel((20, 15)), RED, 6)


def test_transparency_survives_the_conversion(tmp_path: Path) -> None:
    image = Image.new("RGBA", (40, 30), (*input_formats.P3_OF_SRGB_RED, 255))
    image.paste((0, 0, 0, 0), (20, 0, 40, 30))
    data = input_formats.tiff(image, icc_profile=input_formats.display_p3_profile())
    result, out = rendered(tmp_path, data, UPRIGHT)
    assert result.format == "PNG"
    assert near(out.getpixel((5, 5)), (*RED, 255), 6) and out.getpixel((30, 5))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_is_converted_through_its_profile(tmp_path: Path, fmt: str) -> None:
    cyan = Image.new("CMYK", (40, 30), (255, 0, 0, 0))
    data = input_formats.encode(cyan, fmt, icc_profile=input_formats.cmyk_press_profile())
    result, out = rendered(tmp_path, data, UPRIGHT)
    assert (result.format, out.mode) == ("JPEG", "RGB")
    assert near(out.getpixel((20, 15)), input_formats.PRESS_CYAN, 10)


def test_cmyk_without_a_profile_takes_pillows_conversion(tmp_path: Path) -> None:
    cyan = Image.new("CMYK", (40, 30), (255, 0, 0, 0))
    _, out = rendered(tmp_path, input_formats.tiff(cyan, compression="tiff_lzw"), UPRIGHT)
    assert out.mode == "RGB" and near(out.getpixel((20, 15)), (0, 255, 255), 6)


def test_profiles_are_kept_as_they_are_when_the_setting_says_so(tmp_path: Path) -> None:
    profile = input_formats.display_p3_profile()
    _, out = rendered(
        tmp_path, input_formats.tiff(P3_RED, icc_profile=profile), UPRIGHT, keep_icc_profiles=True
    )
    assert out.info.get("icc_profile") == profile
    assert near(out.getpixel((30, 15)), input_formats.P3_OF_SRGB_RED, 4)


def test_the_web_preset_on_a_heic_is_srgb_jpeg(tmp_path: Path) -> None:
    data = input_formats.heic(
        Image.new("RGB", (640, 480), input_formats.P3_OF_SRGB_RED),
        icc_profile=input_formats.display_p3_profile(),
    )
    src, dst = tmp_path / "input", tmp_path / "output"
    src.write_bytes(data)
    output = Output(name="web", ops=BUILTIN_PRESETS["web"].ops, preset="web")
    (result,) = render(src, [(output, dst)], limits=LIMITS)
    assert (result.format, result.width, result.height) == ("JPEG", 640, 480)
    with Image.open(dst) as out:
        assert near(out.getpixel((320, 240)), RED, 6)


def test_a_red_stamp_on_a_cmyk_picture_is_red_after_conversion(tmp_path: Path) -> None:
    # The stamp is drawn once the picture is sRGB (colour steps come after the conversion), so its
    # red is not sent through the press profile.
    data = input_formats.encode(
        Image.new("CMYK", (400, 300), (0, 0, 0, 0)), "JPEG", icc_profile=input_formats.cmyk_press_profile()
    )
    _, out = rendered(
        tmp_path, data, [{"op": "resize", "width": 200}, {"op": "watermark", "text": "MMMM", "size": 40}]
    )
    assert out.mode == "RGB"
    reds = [pixel for pixel in out.crop((0, 0, 100, 60)).get_flattened_data() if near(pixel, RED, 40)]
    assert len(reds) > 200, "the stamp is red"
    assert near(out.getpixel((190, 140)), (255, 255, 255), 6)


def _p3_photo_turned(width: int, height: int) -> tuple[bytes, Image.Image]:
    """A phone-like JPEG (a photo in Display P3, EXIF orientation 6) and what its pixels are once
    upright and in sRGB, converted apart (a new image, as ImageCms makes by default)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    profile = input_formats.display_p3_profile()
    data = input_formats.encode(photo(width, height), "JPEG", quality=95, icc_profile=profile, exif=exif)
    with Image.open(io.BytesIO(data)) as decoded:
        upright = decoded.transpose(Image.Transpose.ROTATE_270)
    to_srgb = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"), "RGB", "RGB"
    )
    return data, ImageCms.applyTransform(upright, to_srgb) or upright


def test_a_p3_photo_converted_where_it_lies_has_the_pixels_of_a_separate_conversion(tmp_path: Path) -> None:
    # The last output converts the decoded frame itself (nobody needs it afterwards); the first one
    # converts a new image. Both are the same pixels as a conversion of their own, PNG keeps them
    # exactly, and the first output's conversion did not change what the second one started from.
    data, expected = _p3_photo_turned(320, 240)
    src = tmp_path / "input"
    src.write_bytes(data)
    ops = OPS.validate_python(
        [{"op": "watermark", "text": "AI magic added!"}, {"op": "format", "format": "png"}]
    )
    outputs = [(Output(name=name, ops=tuple(ops)), tmp_path / name) for name in ("first", "last")]
    results = render(src, outputs, limits=LIMITS)
    below_the_stamp = (0, 120, 240, 320)
    for result, (_, dst) in zip(results, outputs, strict=True):
        assert isinstance(result, ProcessedImage)
        assert (result.width, result.height) == (240, 320), "upright: EXIF orientation 6 applied"
        with Image.open(dst) as out:
            assert "icc_profile" not in out.info and "exif" not in out.info
            difference = ImageChops.difference(
                out.convert("RGB").crop(below_the_stamp), expected.crop(below_the_stamp)
            )
            assert difference.getbbox() is None, "same pixels as a separate conversion"
            top = (0, 0, 240, 40)
            stamp = ImageChops.difference(out.convert("RGB").crop(top), expected.crop(top))
            assert stamp.getbbox() is not None, "the stamp is drawn above"


def test_a_read_only_frame_is_converted_into_a_new_image(tmp_path: Path) -> None:
    # An uncompressed RGBA TIFF in one strip is mapped from the file read-only, not decoded: its
    # conversion must not be written where it lies (the input stays as uploaded).
    image = Image.new("RGBA", (40, 30), (*input_formats.P3_OF_SRGB_RED, 255))
    data = input_formats.tiff(image, icc_profile=input_formats.display_p3_profile())
    with Image.open(io.BytesIO(data)) as probe:
        assert len(probe.tile) == 1 and probe.tile[0].codec_name == "raw"
    result, out = rendered(tmp_path, data, [{"op": "watermark", "text": "x", "size": 12}])
    assert result.format == "PNG" and near(out.getpixel((35, 25)), (*RED, 255), 6)
    assert (tmp_path / "input").read_bytes() == data


def test_a_thumbnail_of_a_p3_picture_is_converted_after_shrinking_and_still_right(tmp_path: Path) -> None:
    picture = Image.new("RGB", (1200, 900), input_formats.P3_OF_SRGB_RED)
    picture.paste((255, 255, 255), (600, 0, 1200, 900))
    data = input_formats.heic(picture, icc_profile=input_formats.display_p3_profile())
    _, out = rendered(tmp_path, data, [{"op": "resize", "width": 256, "height": 256, "mode": "fit"}])
    assert out.size == (256, 192)
    assert near(out.getpixel((40, 96)), RED, 8) and near(out.getpixel((220, 96)), (255, 255, 255), 6)


def test_an_avif_whose_picture_data_is_garbage_fails_as_damaged(tmp_path: Path) -> None:
    # libavif's own error (a RuntimeError from Pillow's plugin) is the picture's fault, not a retry's.
    data = input_formats.avif(layout(128, 128))
    start = data.index(b"mdat") + 4
    with pytest.raises(ImageRejected) as refused:
        rendered(tmp_path, data[:start] + bytes(len(data) - start), UPRIGHT)
    assert str(refused.value) == DAMAGED_MESSAGE


def test_an_animated_avif_whose_timescale_is_zero_fails_as_damaged(tmp_path: Path) -> None:
    # Pillow divides by the track's timescale (mdhd) for each frame's timestamp.
    data = bytearray(input_formats.animated_avif([layout(), layout()]))
    at = data.index(b"mdhd") + 4
    timescale = at + 4 + (8 if data[at] == 0 else 16)
    data[timescale : timescale + 4] = bytes(4)
    with pytest.raises(ImageRejected) as refused:
        rendered(tmp_path, bytes(data), UPRIGHT)
    assert str(refused.value) == DAMAGED_MESSAGE
