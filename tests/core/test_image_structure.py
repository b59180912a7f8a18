"""Identifying a file costs a bounded amount of work whatever its bytes (core.image_structure, used
by core.formats.probe_image): files of millions of tiny parts, far larger than the test stack's
upload limit allows (tests/api/test_hostile_uploads.py sends the small ones), are refused within a
deadline, each with its reason in words; ordinary files are identified as before."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from core.formats import AnimationTooLarge, TooCostlyToIdentify, more_frames_than_message, probe_image
from core.image_structure import (
    GIF_MAX_BLOCKS,
    GIF_TOO_MANY_BLOCKS,
    JPEG_HEAD_BYTES,
    JPEG_MAX_SCANS,
    JPEG_TOO_MANY_SCANS,
    PNG_MAX_CHUNKS,
    PNG_MAX_INFLATED_CHUNK_BYTES,
    PNG_TEXT_TOO_LARGE,
    PNG_TOO_MANY_CHUNKS,
    TOO_COSTLY_TO_READ,
    count_gif_frames,
    png_metadata_too_large_message,
)
from tests import images

MAX_PIXELS = 50_000_000
MAX_FRAMES = 500
# Before the bounds, Pillow took 7 to 30 s over each of the big files below.
DEADLINE_SECONDS = 2.0


def probe(tmp_path: Path, data: bytes) -> object:
    path = tmp_path / "upload"
    path.write_bytes(data)
    return probe_image(path, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)


def refused_within_deadline(tmp_path: Path, data: bytes, error: type[Exception]) -> str:
    path = tmp_path / "upload"
    path.write_bytes(data)
    started = time.monotonic()
    with pytest.raises(error) as raised:
        probe_image(path, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
    assert time.monotonic() - started < DEADLINE_SECONDS
    return str(raised.value)


def test_a_png_of_two_million_empty_chunks_is_refused_at_once(tmp_path: Path) -> None:
    data = images.png_with_empty_chunks(2_000_000)
    assert len(data) > 24_000_000

    message = refused_within_deadline(tmp_path, data, TooCostlyToIdentify)

    assert message == PNG_TOO_MANY_CHUNKS == "PNG has more than 20,000 chunks; the limit is 20,000."


def test_a_png_at_the_chunk_limit_is_identified(tmp_path: Path) -> None:
    # IHDR, IDAT and IEND are chunks too.
    data = images.png_with_empty_chunks(PNG_MAX_CHUNKS - 3)

    assert probe(tmp_path, data) == probe(tmp_path, images.png_with_empty_chunks(0))
    with pytest.raises(TooCostlyToIdentify):
        probe(tmp_path, images.png_with_empty_chunks(PNG_MAX_CHUNKS - 2))


def test_a_gif_of_two_million_frames_is_refused_one_frame_past_the_limit(tmp_path: Path) -> None:
    data = images.gif_with_tiny_frames(2_000_000)
    assert len(data) > 30_000_000

    message = refused_within_deadline(tmp_path, data, AnimationTooLarge)

    assert message == more_frames_than_message(MAX_FRAMES)
    assert message == "Animation has more than 500 frames; the limit is 500."
    with path_open(tmp_path, data) as file:
        assert count_gif_frames(file, stop_after=MAX_FRAMES + 1) == MAX_FRAMES + 1


def test_a_gif_split_into_millions_of_one_byte_blocks_is_refused(tmp_path: Path) -> None:
    message = refused_within_deadline(tmp_path, images.gif_with_tiny_blocks(4_000_000), TooCostlyToIdentify)

    assert message == GIF_TOO_MANY_BLOCKS
    assert message == "GIF is split into more than 250,000 blocks; the limit is 250,000."
    assert probe(tmp_path, images.gif_with_tiny_blocks(GIF_MAX_BLOCKS // 2)).frames == 1


def test_a_jpeg_of_millions_of_fill_bytes_is_refused_by_the_read_budget(tmp_path: Path) -> None:
    message = refused_within_deadline(tmp_path, images.jpeg_with_fill_bytes(24_000_000), TooCostlyToIdentify)

    assert message == TOO_COSTLY_TO_READ
    assert message == (
        "The file is made of too many small parts: identifying it takes more than 100,000 reads "
        "or more than twice its size in bytes."
    )
    # A few fill bytes are legal and common.
    assert probe(tmp_path, images.jpeg_with_fill_bytes(10)).format == "JPEG"


def test_a_progressive_jpeg_of_thousands_of_scans_is_refused_from_its_header(tmp_path: Path) -> None:
    # Each repeated scan is another pass of libjpeg over the picture: decoding this file took
    # seconds (timed here, to show what the refusal saves), identifying it must not.
    data = images.jpeg_with_scans(3000, 1024, 1024)
    started = time.monotonic()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    decoding = time.monotonic() - started
    started = time.monotonic()

    message = refused_within_deadline(tmp_path, data, TooCostlyToIdentify)

    assert time.monotonic() - started < decoding / 10
    assert message == JPEG_TOO_MANY_SCANS
    assert message == (
        "JPEG has more than 100 progressive scans; the limit is 100 "
        "(each scan is a pass over the whole picture)."
    )


def test_scans_past_a_long_metadata_head_are_counted_too(tmp_path: Path) -> None:
    # The walk reads the file's beginning first (JPEG_HEAD_BYTES); three 64 KiB APPn segments put
    # the frame header and the scans past it, where the whole file is mapped and walked.
    data = images.jpeg_with_scans(3000, 256, 256)
    padding = b"".join(b"\xff\xef\xff\xff" + b"\0" * 65533 for _ in range(3))
    padded = data[:2] + padding + data[2:]
    assert padded.index(b"\xff\xc2") > JPEG_HEAD_BYTES

    assert refused_within_deadline(tmp_path, padded, TooCostlyToIdentify) == JPEG_TOO_MANY_SCANS


def test_a_progressive_jpeg_at_the_scan_limit_is_identified(tmp_path: Path) -> None:
    ordinary = images.encode(images.photo(300, 200), "JPEG", progressive=True)
    assert ordinary.count(b"\xff\xda") == 10  # what the encoder writes: far below the limit
    assert probe(tmp_path, ordinary).format == "JPEG"
    assert probe(tmp_path, images.jpeg_with_scans(JPEG_MAX_SCANS - 10)).format == "JPEG"
    with pytest.raises(TooCostlyToIdentify):
        probe(tmp_path, images.jpeg_with_scans(JPEG_MAX_SCANS - 9))


def test_only_the_scans_of_a_jpeg_count_not_marker_bytes_in_its_metadata(tmp_path: Path) -> None:
    # An EXIF thumbnail or any APPn data may hold SOS markers of its own: the walk skips segments
    # by their length, so only the picture's scans count.
    sos_in_metadata = b"\xff\xda" * 30_000
    data = images.encode(images.photo(300, 200), "JPEG", progressive=True, icc_profile=sos_in_metadata)

    assert probe(tmp_path, data).format == "JPEG"


def path_open(tmp_path: Path, data: bytes) -> io.BufferedReader:
    path = tmp_path / "walked"
    path.write_bytes(data)
    return path.open("rb")


def gif(frames: list[Image.Image], **params: object) -> bytes:
    return images.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], **params)


@pytest.mark.parametrize(
    "data",
    [
        gif([Image.new("L", (4, 4), shade) for shade in range(0, 250, 10)], comment=b"a comment", loop=0),
        gif([images.photo(40, 30).convert("P", colors=7 + index) for index in range(9)], optimize=False),
        gif([Image.new("P", (3, 3))]),
        images.encode(images.photo(64, 48), "GIF"),
    ],
    ids=["grey-with-comment", "local-palettes", "one-frame", "photo"],
)
def test_gif_frames_are_counted_as_pillow_counts_them(tmp_path: Path, data: bytes) -> None:
    expected = Image.open(io.BytesIO(data)).n_frames

    with path_open(tmp_path, data) as file:
        assert count_gif_frames(file, stop_after=1000) == expected
    assert probe(tmp_path, data).frames == expected


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (b"zTXt", b"comment\0\0"),
        (b"iCCP", b"profile\0\0"),
        (b"iTXt", b"XML:com.adobe.xmp\0\x01\0en\0\0"),
    ],
)
def test_a_png_metadata_chunk_over_the_limit_is_refused_naming_it(
    tmp_path: Path, kind: bytes, body: bytes
) -> None:
    at_limit = images.png_with_chunks((kind, body + zlib.compress(b"a" * PNG_MAX_INFLATED_CHUNK_BYTES)))
    over = images.png_with_chunks((kind, body + zlib.compress(b"a" * (PNG_MAX_INFLATED_CHUNK_BYTES + 1))))

    assert probe(tmp_path, at_limit).format == "PNG"
    with pytest.raises(TooCostlyToIdentify) as raised:
        probe(tmp_path, over)
    assert str(raised.value) == png_metadata_too_large_message(kind.decode())
    assert str(raised.value) == (
        f"PNG metadata chunk {kind.decode()} is larger than 1,048,576 bytes once decompressed; "
        "the limit is 1,048,576."
    )


def test_png_text_over_the_limit_in_all_is_refused(tmp_path: Path) -> None:
    one_mib = (b"zTXt", b"comment\0\0" + zlib.compress(b"a" * PNG_MAX_INFLATED_CHUNK_BYTES))

    assert probe(tmp_path, images.png_with_chunks(one_mib, count=64)).format == "PNG"
    with pytest.raises(TooCostlyToIdentify) as raised:
        probe(tmp_path, images.png_with_chunks(one_mib, count=65))
    assert str(raised.value) == PNG_TEXT_TOO_LARGE
    assert str(raised.value) == "PNG text metadata is larger than 67,108,864 bytes in all."


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("PNG", {"save_all": True, "append_images": [images.photo(300, 200)] * 3}),
        ("WEBP", {"save_all": True, "append_images": [images.photo(300, 200).rotate(90)] * 3}),
        ("JPEG", {"icc_profile": b"\0" * 3_000_000, "exif": images.personal_exif()}),
        ("BMP", {}),
    ],
    ids=["png", "apng", "animated-webp", "jpeg-with-big-icc", "bmp"],
)
def test_ordinary_files_are_identified_as_before(tmp_path: Path, fmt: str, params: dict) -> None:
    data = images.encode(images.photo(300, 200), fmt, **params)
    with Image.open(io.BytesIO(data)) as image:
        expected = (image.format, image.size, getattr(image, "n_frames", 1))

    info = probe(tmp_path, data)

    assert (info.format, (info.width, info.height), info.frames) == expected


_PROBE_UNDER_A_MEMORY_LIMIT = """
import resource, sys
from pathlib import Path
from core.formats import ImageRejected, probe_image
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
try:
    probe_image(Path(sys.argv[1]), max_pixels=50_000_000, max_frames=500)
except ImageRejected as exc:
    print("rejected:", exc)
"""


def test_a_png_chunk_claiming_two_gigabytes_is_not_read_into_memory(tmp_path: Path) -> None:
    # The walk read a text or ICC chunk whole, by the length it declares: file.read(2 GB) of a
    # 100-byte upload allocates 2 GB first, a MemoryError (a 500) where memory is not overcommitted
    # (here: an address-space limit of 1 GiB, in a child process).
    valid = images.png_with_chunks((b"iCCP", b"profile\0\0" + zlib.compress(b"a")))
    at = valid.index(b"iCCP") - 4
    path = tmp_path / "upload"
    path.write_bytes(valid[:at] + (0x7FFF_FFF0).to_bytes(4) + valid[at + 4 :])

    done = subprocess.run(
        [sys.executable, "-c", _PROBE_UNDER_A_MEMORY_LIMIT, str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("rejected:"), done.stdout
