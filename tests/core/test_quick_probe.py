"""The quick probe (core.formats.probe_image(quick=True)): what the API runs on its event loop.

An ordinary image is identified by it exactly as by the full probe; a file made of many small parts
(each cheap, thousands of them) makes it give up (QuickProbeSpent) after QUICK_PROBE_READS units of
work instead of holding the loop for tens of milliseconds, and the full probe then judges the file
as before (tests/api/test_probe_on_loop.py: what that means for other requests).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

from core.formats import ImageRejected, UnsupportedImage, probe_image
from core.image_structure import QuickProbeSpent
from tests import images

MAX_PIXELS = 50_000_000
MAX_FRAMES = 500


def _probe(path: Path, *, quick: bool) -> object:
    return probe_image(path, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES, quick=quick)


def _jpeg(**params: object) -> bytes:
    return images.encode(images.photo(300, 200), "JPEG", **params)


ORDINARY = {
    "jpeg": lambda: _jpeg(),
    "jpeg-exif-icc": lambda: _jpeg(icc_profile=b"\0" * 300_000, exif=images.personal_exif()),
    "jpeg-progressive": lambda: _jpeg(progressive=True),
    "png": lambda: images.encode(images.photo(300, 200), "PNG"),
    "apng": lambda: images.encode(
        images.photo(300, 200), "PNG", save_all=True, append_images=[images.photo(300, 200)] * 3
    ),
    "webp": lambda: images.encode(images.photo(300, 200), "WEBP"),
    "tiff-lzw": lambda: images.encode(images.photo(300, 200), "TIFF", compression="tiff_lzw"),
    "bmp": lambda: images.encode(images.photo(300, 200), "BMP"),
    "avif": lambda: images.encode(images.photo(300, 200), "AVIF"),
}


@pytest.mark.parametrize("kind", sorted(ORDINARY))
def test_an_ordinary_image_is_identified_by_the_quick_probe_as_by_the_full_one(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / kind
    path.write_bytes(ORDINARY[kind]())
    assert _probe(path, quick=True) == _probe(path, quick=False)


def _tiff_with_tags(count: int) -> bytes:
    """A one-page 8×8 greyscale TIFF with `count` tags (the required ones, then ASCII ones)."""
    body = bytearray(b"II*\0\0\0\0\0")
    pixels = len(body)
    body += b"\0" * 64
    text = len(body)
    body += b"A" * 199 + b"\0"
    entries = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    entries += [(273, 4, 1, pixels), (277, 3, 1, 1), (278, 3, 1, 8), (279, 4, 1, 64)]
    entries += [(40_000 + i, 2, 200, text) for i in range(count - len(entries))]
    body[4:8] = struct.pack("<I", len(body))
    body += struct.pack("<H", len(entries))
    for tag, kind, number, value in sorted(entries):
        body += struct.pack(
            "<HHIHH" if kind == 3 else "<HHII", tag, kind, number, *((value, 0) if kind == 3 else (value,))
        )
    body += struct.pack("<I", 0)
    return bytes(body)


def _noise_gif(frames: int) -> bytes:
    pictures = [Image.effect_noise((200, 150), 60).convert("P") for _ in range(frames)]
    return images.encode(pictures[0], "GIF", save_all=True, append_images=pictures[1:])


def _small_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG")
    return buffer.getvalue()


MANY_PARTS = {
    "png-19990-empty-chunks": lambda: images.png_with_empty_chunks(19_990),
    "jpeg-9990-app1-segments": lambda: (
        _small_jpeg()[:2] + b"\xff\xe1\x00\x08Exif\0\0" * 9_990 + _small_jpeg()[2:]
    ),
    "jpeg-9990-comments": lambda: _small_jpeg()[:2] + b"\xff\xfe\x00\x02" * 9_990 + _small_jpeg()[2:],
    "tiff-4096-tags": lambda: _tiff_with_tags(4_096),
    # Its frames are walked block by block (255 bytes each): every GIF of some size is "many parts".
    "gif-of-noise": lambda: _noise_gif(10),
}


# Pillow warns about each of the TIFF's oversized tags; the suite makes warnings errors.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", sorted(MANY_PARTS))
def test_a_file_of_many_small_parts_makes_the_quick_probe_give_up(tmp_path: Path, kind: str) -> None:
    path = tmp_path / kind
    path.write_bytes(MANY_PARTS[kind]())
    assert path.stat().st_size < 512 * 1024  # small enough to be tried on the API's event loop
    expected = _outcome(path, quick=False)
    with pytest.raises(QuickProbeSpent):
        _probe(path, quick=True)
    assert not isinstance(expected, QuickProbeSpent)  # the full probe judges it, as before


def _outcome(path: Path, *, quick: bool) -> object:
    try:
        return _probe(path, quick=quick)
    except (ImageRejected, UnsupportedImage) as refused:
        return refused
