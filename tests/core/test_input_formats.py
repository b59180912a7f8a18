"""Identifying AVIF, HEIC and TIFF uploads (core.formats.probe_image with core.heif_structure and
core.tiff_structure): real files from real encoders are identified with their displayed size, and
every bomb or damaged file gets its answer before any decoder runs."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from core.formats import (
    BIGTIFF_UNSUPPORTED,
    DAMAGED_MESSAGE,
    UNSUPPORTED_MESSAGE,
    AnimationTooLarge,
    ImageInfo,
    TooCostlyToIdentify,
    TooManyPixels,
    UnsupportedImage,
    default_output_format,
    probe_image,
    too_many_frames_message,
    too_many_pages_message,
    too_many_pixels_message,
)
from core.heif_structure import (
    HEIF_MAX_ITEMS,
    HEIF_TOO_MANY_BOXES,
    HEIF_TOO_MANY_ITEMS,
    coded_size_message,
    too_many_tiles_message,
)
from core.tiff_structure import (
    TIFF_COMPRESSION_UNSUPPORTED,
    tile_too_large_message,
    too_many_tile_pixels_message,
)
from tests import images, input_formats

MAX_PIXELS = 50_000_000
MAX_FRAMES = 500


def probe(tmp_path: Path, data: bytes, *, max_frames: int = MAX_FRAMES) -> ImageInfo:
    path = tmp_path / "upload"
    path.write_bytes(data)
    return probe_image(path, max_pixels=MAX_PIXELS, max_frames=max_frames)


def two_colours(width: int = 64, height: int = 32) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, width // 4, height // 2))
    return image


def quarter_turn_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return exif.tobytes()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (input_formats.heic(two_colours()), ImageInfo("HEIF", 64, 32, 1)),
        # pillow-heif writes an EXIF orientation as the HEIF `irot` property: the size as displayed.
        (input_formats.heic(two_colours(), exif=quarter_turn_exif()), ImageInfo("HEIF", 32, 64, 1)),
        (input_formats.avif(two_colours()), ImageInfo("AVIF", 64, 32, 1)),
        (input_formats.animated_avif([two_colours()] * 3), ImageInfo("AVIF", 64, 32, 3)),
        # Alpha is a second AV1 picture (an auxiliary item, or track): its coded size is checked too.
        (input_formats.avif(Image.new("RGBA", (63, 31), (9, 9, 9, 90))), ImageInfo("AVIF", 63, 31, 1)),
        (
            input_formats.animated_avif([Image.new("RGBA", (40, 30), (9, 9, 9, 90))] * 2),
            ImageInfo("AVIF", 40, 30, 2),
        ),
        (input_formats.avif(two_colours(33, 17), lossless=True), ImageInfo("AVIF", 33, 17, 1)),
        (input_formats.tiff(two_colours(), compression="tiff_lzw"), ImageInfo("TIFF", 64, 32, 1)),
        (input_formats.tiff(two_colours(), compression="jpeg"), ImageInfo("TIFF", 64, 32, 1)),
        (input_formats.tiff(two_colours(), compression="tiff_deflate"), ImageInfo("TIFF", 64, 32, 1)),
        (input_formats.tiff(two_colours(), compression="tiff_adobe_deflate"), ImageInfo("TIFF", 64, 32, 1)),
        (input_formats.tiff(two_colours(), compression="packbits"), ImageInfo("TIFF", 64, 32, 1)),
        (input_formats.tiff(two_colours(), compression="raw"), ImageInfo("TIFF", 64, 32, 1)),
        # Tiled as GDAL and libtiff's tools write them: 256-pixel tiles overhanging a smaller picture.
        (input_formats.tiled_tiff(300, 200, 256), ImageInfo("TIFF", 300, 200, 1)),
        (input_formats.tiled_tiff(5000, 4000, 512), ImageInfo("TIFF", 5000, 4000, 1)),
        (input_formats.tiff(Image.new("CMYK", (40, 30))), ImageInfo("TIFF", 40, 30, 1)),
        (input_formats.tiff(Image.new("I;16", (40, 30))), ImageInfo("TIFF", 40, 30, 1)),
        (input_formats.tiff_16_bit_rgb(40, 30, (1, 2, 3)), ImageInfo("TIFF", 40, 30, 1)),
        # The first page is what is rendered: one frame, the pages having been counted.
        (input_formats.tiff_pages(12), ImageInfo("TIFF", 1, 1, 1)),
    ],
    ids=[
        "heic",
        "heic-irot",
        "avif",
        "avif-animated",
        "avif-alpha",
        "avif-animated-alpha",
        "avif-odd-lossless",
        "tiff-lzw",
        "tiff-jpeg",
        "tiff-deflate",
        "tiff-adobe-deflate",
        "tiff-packbits",
        "tiff-none",
        "tiff-tiles-overhanging",
        "tiff-tiles",
        "tiff-cmyk",
        "tiff-16",
        "tiff-16-rgb",
        "tiff-pages",
    ],
)
def test_each_new_format_is_identified_from_its_bytes(
    tmp_path: Path, data: bytes, expected: ImageInfo
) -> None:
    assert probe(tmp_path, data) == expected


def test_the_api_identifies_heic_without_any_heif_library(tmp_path: Path) -> None:
    # The API image has no pi-heif: the probe must answer from the boxes alone, in a process where
    # importing either HEIF library fails.
    path = tmp_path / "photo.heic"
    path.write_bytes(input_formats.heic(two_colours()))
    code = (
        "import sys; sys.modules['pi_heif'] = sys.modules['pillow_heif'] = None\n"
        "from core.formats import probe_image\n"
        f"print(probe_image({str(path)!r}, max_pixels=10**6, max_frames=5))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "ImageInfo(format='HEIF', width=64, height=32, frames=1)"


def test_a_heic_of_thousands_of_tiles_is_refused_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, input_formats.heic_grid_of_tiles(3000, tile_size=64))
    assert str(refused.value) == too_many_tiles_message(3000)


def test_a_heic_of_too_many_items_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, input_formats.heic_grid_of_tiles(HEIF_MAX_ITEMS + 10, tile_size=16))
    assert str(refused.value) == HEIF_TOO_MANY_ITEMS


def test_a_heic_grid_of_tiles_within_limits_is_sized_by_its_grid(tmp_path: Path) -> None:
    # No HEVC data: identification never looks at it (the worker would fail it as damaged).
    info = probe(tmp_path, input_formats.heic_grid_of_tiles(48, tile_size=512))
    assert info == ImageInfo("HEIF", 6 * 512, 8 * 512, 1)


@pytest.mark.parametrize("make", [input_formats.avif, input_formats.heic], ids=["avif", "heic"])
def test_a_tiny_file_claiming_60000_by_60000_pixels_is_refused(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    data = input_formats.with_ispe(make(two_colours()), 60_000, 60_000)
    assert len(data) < 2_000
    with pytest.raises(TooManyPixels) as refused:
        probe(tmp_path, data)
    assert str(refused.value) == too_many_pixels_message(60_000 * 60_000, MAX_PIXELS)


def test_an_avif_coded_larger_than_it_declares_is_refused(tmp_path: Path) -> None:
    # libavif decodes the AV1 frame at the size its sequence header says, whatever `ispe` declares:
    # a few KB declaring 64×64 coded at 16,384×16,384 took a gigabyte.
    data = input_formats.with_ispe(input_formats.avif(two_colours(1024, 1024), speed=10), 64, 64)
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, data)
    assert str(refused.value) == coded_size_message((64, 64), (1024, 1024))


def test_an_animated_avif_whose_frames_are_coded_larger_than_declared_is_refused(tmp_path: Path) -> None:
    frames = [two_colours(512, 512), two_colours(512, 512).rotate(180)]
    data = input_formats.with_track_size(input_formats.animated_avif(frames), 64, 64)
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, data)
    assert str(refused.value) == coded_size_message((64, 64), (512, 512))


def test_an_animated_avif_with_a_later_frame_coded_larger_is_refused(tmp_path: Path) -> None:
    # A sequence header may come again in any frame and change the size: the third frame of an
    # honest animation is given the sequence header of a 1,024 × 1,024 picture (its own frame
    # overwritten: the probe stops at the lie).
    still = input_formats.avif(two_colours(1024, 1024), speed=10)
    at = still.index(b"\x12\x00\x0a") + 2  # a temporal delimiter, then the sequence header OBU
    header = still[at : at + 2 + still[at + 1]]
    data = bytearray(input_formats.animated_avif([two_colours(64, 64)] * 3))
    third = data.rindex(b"\x12\x00\x32") + 2  # the last frame OBU, after its temporal delimiter
    data[third : third + len(header)] = header
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, bytes(data))
    assert str(refused.value) == coded_size_message((64, 64), (1024, 1024))


def test_an_avif_coded_within_a_superblock_of_its_declared_size_is_accepted(tmp_path: Path) -> None:
    # AV1 codes in superblocks of up to 128 pixels: a frame that much larger costs nothing more.
    data = input_formats.with_ispe(input_formats.avif(two_colours(150, 140)), 100, 100)
    assert probe(tmp_path, data) == ImageInfo("AVIF", 100, 100, 1)


def test_an_avif_whose_sequence_header_cannot_be_found_is_damaged(tmp_path: Path) -> None:
    for data in (
        input_formats.with_zeroed_picture_data(input_formats.avif(two_colours())),
        input_formats.with_zeroed_picture_data(input_formats.animated_avif([two_colours()] * 2)),
    ):
        with pytest.raises(UnsupportedImage) as refused:
            probe(tmp_path, data)
        assert str(refused.value) == DAMAGED_MESSAGE


def test_an_animated_avif_over_max_frames_is_refused(tmp_path: Path) -> None:
    frames = [two_colours(16, 16)] * 6
    with pytest.raises(AnimationTooLarge) as refused:
        probe(tmp_path, input_formats.animated_avif(frames), max_frames=5)
    assert str(refused.value) == too_many_frames_message(6, 5)


def test_a_tiff_of_thousands_of_pages_is_refused_quickly(tmp_path: Path) -> None:
    data = input_formats.tiff_pages(3000)
    started = time.perf_counter()
    with pytest.raises(AnimationTooLarge) as refused:
        probe(tmp_path, data)
    assert time.perf_counter() - started < 1.0
    assert str(refused.value) == too_many_pages_message(MAX_FRAMES)


def test_a_tiff_whose_pages_loop_is_damaged(tmp_path: Path) -> None:
    data = bytearray(input_formats.tiff(two_colours()))
    # Point the first page's next-page offset back at itself.
    first = int.from_bytes(data[4:8], "little")
    tags = int.from_bytes(data[first : first + 2], "little")
    data[first + 2 + 12 * tags : first + 6 + 12 * tags] = first.to_bytes(4, "little")
    with pytest.raises(UnsupportedImage) as refused:
        probe(tmp_path, bytes(data))
    assert str(refused.value) == DAMAGED_MESSAGE


def test_a_tiff_tile_larger_than_its_picture_is_refused(tmp_path: Path) -> None:
    # One 16,384×16,384 tile in a 16×16 picture, 783 KB, took 818 MB to decode.
    data = input_formats.tiled_tiff(16, 16, 16_384)
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, data)
    assert str(refused.value) == tile_too_large_message((16_384, 16_384), (16, 16))


def test_a_tiff_whose_tiles_add_up_to_too_many_pixels_is_refused(tmp_path: Path) -> None:
    # A 1-pixel-high picture 524,288 wide in 1,024-pixel tiles: 512 tiles of a megapixel each, all
    # pointing at the same 1 KB of compressed zeros.
    data = input_formats.tiled_tiff(524_288, 1, 1_024)
    assert len(data) < 10_000
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, data)
    assert str(refused.value) == too_many_tile_pixels_message(512, 512 * 1024 * 1024, 2 * MAX_PIXELS)


def test_a_tiff_listing_more_tiles_than_its_picture_needs_is_refused(tmp_path: Path) -> None:
    data = input_formats.tiled_tiff(256, 256, 256, tiles=2_000)
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, data)
    assert str(refused.value) == too_many_tile_pixels_message(2_000, 2_000 * 256 * 256, 2 * MAX_PIXELS)


@pytest.mark.parametrize(
    ("compression", "name"),
    [
        (2, "tiff_ccitt, 2"),
        (3, "group3, 3"),
        (4, "group4, 4"),
        (6, "tiff_jpeg, 6"),
        (32809, "tiff_thunderscan, 32809"),
        (34676, "tiff_sgilog, 34676"),
        (34925, "lzma, 34925"),
        (50000, "zstd, 50000"),
        (50001, "webp, 50001"),
        (34712, "unknown, 34712"),
    ],
)
def test_a_tiff_compressed_with_a_codec_outside_the_list_is_refused(
    tmp_path: Path, compression: int, name: str
) -> None:
    data = input_formats.with_tiff_compression(input_formats.tiff(Image.new("L", (64, 64), 128)), compression)
    with pytest.raises(UnsupportedImage) as refused:
        probe(tmp_path, data)
    assert str(refused.value) == TIFF_COMPRESSION_UNSUPPORTED.format(compression=name)


def test_a_tiff_whose_compression_pillow_and_libtiff_could_read_differently_is_damaged(
    tmp_path: Path,
) -> None:
    # Three Compression values (at an offset): Pillow takes the first, libtiff may refuse or ignore.
    data = bytearray(input_formats.tiff(Image.new("L", (64, 64), 128), compression="tiff_lzw"))
    (first,) = struct.unpack_from("<I", data, 4)
    (tags,) = struct.unpack_from("<H", data, first)
    for entry in range(first + 2, first + 2 + 12 * tags, 12):
        if struct.unpack_from("<H", data, entry)[0] == 259:
            struct.pack_into("<I", data, entry + 4, 3)
    with pytest.raises(UnsupportedImage) as refused:
        probe(tmp_path, bytes(data))
    assert str(refused.value) == DAMAGED_MESSAGE


def test_a_tiff_claiming_too_many_pixels_is_refused(tmp_path: Path) -> None:
    data = bytearray(input_formats.tiff_16_bit_rgb(4, 4, (0, 0, 0)))
    data[18:22] = (60_000).to_bytes(4, "little")  # ImageWidth, the first tag's value
    data[30:34] = (60_000).to_bytes(4, "little")  # ImageLength
    with pytest.raises(TooManyPixels):
        probe(tmp_path, bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        input_formats.heic(two_colours())[:-20],
        input_formats.avif(two_colours())[:-20],
        input_formats.heic(two_colours())[:200],
        b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"garbage" * 20,
        b"\0\0\0\x18ftypavif\0\0\0\0mif1avif" + b"\0" * 64,
        b"II*\0" + b"\xff" * 60,
        b"MM\0*\0\0\0\x08\0\0",
    ],
    ids=[
        "heic-cut",
        "avif-cut",
        "heic-cut-in-meta",
        "heic-garbage",
        "avif-empty",
        "tiff-garbage",
        "tiff-no-tags",
    ],
)
def test_a_damaged_file_of_the_new_formats_is_refused_as_damaged(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(UnsupportedImage) as refused:
        probe(tmp_path, data)
    assert str(refused.value) in (DAMAGED_MESSAGE, UNSUPPORTED_MESSAGE)


def test_bigtiff_is_not_accepted(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedImage) as refused:
        probe(tmp_path, b"II+\0\x08\0\0\0" + b"\0" * 64)
    assert str(refused.value) == BIGTIFF_UNSUPPORTED


def test_formats_the_service_does_not_write_become_jpeg_or_png() -> None:
    assert default_output_format("HEIF", has_alpha=False) == "JPEG"
    assert default_output_format("TIFF", has_alpha=True) == "PNG"
    assert default_output_format("AVIF", has_alpha=True) == "AVIF"
    assert default_output_format("JPEG", has_alpha=False) == "JPEG"


def test_the_old_formats_are_identified_as_before(tmp_path: Path) -> None:
    assert probe(tmp_path, images.jpeg(30, 20)) == ImageInfo("JPEG", 30, 20, 1)
    assert probe(tmp_path, images.png(30, 20)) == ImageInfo("PNG", 30, 20, 1)


def test_a_meta_box_of_tiny_boxes_is_refused_quickly(tmp_path: Path) -> None:
    # 3 MB of empty 8-byte boxes inside `meta`: each one a step of the walk.
    filler = struct.pack(">I4s", 8, b"free") * 400_000
    meta = struct.pack(">I4s", 12 + len(filler), b"meta") + bytes(4) + filler
    data = struct.pack(">I4s", 20, b"ftyp") + b"heic\0\0\0\0mif1heic"[:12] + meta
    started = time.perf_counter()
    with pytest.raises(TooCostlyToIdentify) as refused:
        probe(tmp_path, data)
    assert time.perf_counter() - started < 1.0
    assert str(refused.value) == HEIF_TOO_MANY_BOXES
