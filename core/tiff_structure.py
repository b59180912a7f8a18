"""Counting a TIFF's pages within limits, before Pillow parses it.

A TIFF is a chain of image file directories (IFDs), one per page, each a list of tags. Pillow reads
only the first to open a file, but counting pages (`n_frames`) makes it parse every directory in
Python, and nothing bounds the chain: a small file can hold thousands of pages, or a loop. This walk
follows the chain by its offsets alone (reading each directory's two-byte entry count and next
offset, never its tags), stops one page past the limit, and refuses a loop or an offset past the end.

The first page, the one decoded, has its tags read too (check_first_page): its compression, since
libtiff has a decoder for every codec ever put in a TIFF (fax, old-style JPEG, ThunderScan, SGILog,
...) and several have a history of security bugs; and its tiles or strips, since nothing ties them
to the picture's size: one 16,384×16,384 tile in a 16×16 picture is decoded whole, and a
1-pixel-high picture can list a thousand tiles pointing at the same few compressed bytes.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from PIL.TiffImagePlugin import COMPRESSION_INFO

from core.image_structure import StructureTooCostly

TIFF_SIGNATURES = (b"II*\0", b"MM\0*")
BIGTIFF_SIGNATURES = (b"II+\0", b"MM\0+")
# Tags a page may have: a scanner or camera writes 15 to 60.
TIFF_MAX_TAGS = 4_096


# Compression (tag 259) values we decode, by name: the codecs the formats people scan and export use.
TIFF_COMPRESSIONS = {1: "none", 5: "LZW", 7: "JPEG", 8: "Deflate", 32946: "Deflate", 32773: "PackBits"}
TIFF_COMPRESSION_UNSUPPORTED = (
    "This TIFF's compression ({compression}) is not supported: use uncompressed, LZW, Deflate, JPEG "
    "or PackBits."
)

_IMAGE_WIDTH, _IMAGE_LENGTH, _COMPRESSION, _STRIP_OFFSETS = 256, 257, 259, 273
_SAMPLES_PER_PIXEL, _ROWS_PER_STRIP, _PLANAR_CONFIGURATION = 277, 278, 284
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS = 322, 323, 324
# A tile may overhang a small picture: writers use their usual tile size whatever the picture's
# (libtiff's tools and GDAL 256, libvips 128). A side up to this costs a decoder nothing worth bounding.
TIFF_FREE_TILE_SIDE = 1024
_SINGLE_VALUED = frozenset(
    {
        _IMAGE_WIDTH,
        _IMAGE_LENGTH,
        _COMPRESSION,
        _SAMPLES_PER_PIXEL,
        _ROWS_PER_STRIP,
        _PLANAR_CONFIGURATION,
        _TILE_WIDTH,
        _TILE_LENGTH,
    }
)
_READ = _SINGLE_VALUED | {_STRIP_OFFSETS, _TILE_OFFSETS}
# Tag value types that hold one integer in the entry itself: BYTE, SHORT, LONG.
_INTEGER_FORMATS = {1: "B", 3: "H", 4: "I"}


def tile_too_large_message(tile: tuple[int, int], picture: tuple[int, int]) -> str:
    return (
        f"TIFF tiles of {tile[0]:,}×{tile[1]:,} pixels are larger than its {picture[0]:,}×{picture[1]:,} "
        "picture."
    )


def too_many_tile_pixels_message(parts: int, pixels: int, limit: int) -> str:
    return (
        f"TIFF decodes {pixels:,} pixels in {parts:,} tiles or strips; the limit is {limit:,} "
        "(twice the pixel limit)."
    )


class Damaged(ValueError):
    """The directory chain is malformed: no decoder could use it."""


class UnsupportedCompression(ValueError):
    """The first page is compressed with a codec outside TIFF_COMPRESSIONS; the message says which."""


def _header(file: BinaryIO) -> tuple[int, str, int]:
    """The file's size, its byte order (a struct prefix) and the offset of its first directory."""
    size = file.seek(0, 2)
    file.seek(0)
    head = file.read(8)
    if len(head) < 8 or head[:4] not in TIFF_SIGNATURES:
        raise Damaged("not a classic TIFF")
    order = "<" if head[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", head[4:])
    return size, order, offset


def count_tiff_pages(file: BinaryIO, stop_after: int) -> int:
    """The number of pages of the classic TIFF in `file`, counting no further than `stop_after`."""
    size, order, offset = _header(file)
    pages = 0
    seen: set[int] = set()
    while offset:
        if offset in seen or offset + 2 > size:
            raise Damaged("directory loops or lies past the end")
        seen.add(offset)
        file.seek(offset)
        (tags,) = struct.unpack(order + "H", file.read(2))
        if tags == 0 or tags > TIFF_MAX_TAGS:
            raise Damaged("directory has no tags, or an absurd number")
        end = offset + 2 + 12 * tags
        if end + 4 > size:
            raise Damaged("directory cut short")
        pages += 1
        if pages >= stop_after:
            return pages
        file.seek(end)
        (offset,) = struct.unpack(order + "I", file.read(4))
    if pages == 0:
        raise Damaged("no page")
    return pages


def check_first_page(file: BinaryIO, max_pixels: int) -> None:
    """Refuse the first page of the classic TIFF in `file` if its compression is not one of
    TIFF_COMPRESSIONS (UnsupportedCompression), or if its tiles or strips decode to more pixels than
    the picture can need (StructureTooCostly): a tile side longer than the picture's rounded up to 16
    (tiles are multiples of 16) and than TIFF_FREE_TILE_SIDE, or, in all, more than twice
    `max_pixels` (tiles overhang the edges).

    Reads the first directory's entries (at most TIFF_MAX_TAGS, as counted) and nothing they point at.
    """
    size, order, offset = _header(file)
    if offset + 2 > size:
        raise Damaged("directory lies past the end")
    file.seek(offset)
    (tags,) = struct.unpack(order + "H", file.read(2))
    if tags == 0 or tags > TIFF_MAX_TAGS:
        raise Damaged("directory has no tags, or an absurd number")
    entries = file.read(12 * tags)
    if len(entries) != 12 * tags:
        raise Damaged("directory cut short")
    values: dict[int, int] = {}
    counts: dict[int, int] = {}
    for at in range(0, len(entries), 12):
        tag, kind, count = struct.unpack_from(order + "HHI", entries, at)
        if tag in counts and tag in _READ:
            # Pillow keeps the last of a repeated tag and libtiff the first: which one decodes?
            raise Damaged("tag repeated")
        counts.setdefault(tag, count)
        if tag in _SINGLE_VALUED:
            # One integer, in the entry itself; anything else is read differently by Pillow and
            # libtiff (and never written).
            if kind not in _INTEGER_FORMATS or count != 1:
                raise Damaged("tag of an unexpected type or count")
            (values[tag],) = struct.unpack_from(order + _INTEGER_FORMATS[kind], entries, at + 8)
    compression = values.get(_COMPRESSION, 1)
    if compression not in TIFF_COMPRESSIONS:
        name = f"{COMPRESSION_INFO.get(compression, 'unknown')}, {compression}"
        raise UnsupportedCompression(TIFF_COMPRESSION_UNSUPPORTED.format(compression=name))
    width, height = values.get(_IMAGE_WIDTH, 0), values.get(_IMAGE_LENGTH, 0)
    if _TILE_WIDTH in values or _TILE_LENGTH in values:
        part = values.get(_TILE_WIDTH, 0), values.get(_TILE_LENGTH, 0)
        if part[0] > _tile_side_limit(width) or part[1] > _tile_side_limit(height):
            raise StructureTooCostly(tile_too_large_message(part, (width, height)))
        parts = counts.get(_TILE_OFFSETS, 0)
    else:
        # RowsPerStrip defaults to "all of them": libtiff stops at the picture's last row.
        part = width, min(values.get(_ROWS_PER_STRIP, height), height)
        parts = counts.get(_STRIP_OFFSETS, 0)
    if width and height and (part[0] < 1 or part[1] < 1):
        raise Damaged("tiles or strips of no pixels")
    # Separate planes (PlanarConfiguration 2) list each sample's tiles in turn: one sample each.
    planes = min(values.get(_SAMPLES_PER_PIXEL, 1), 4) if values.get(_PLANAR_CONFIGURATION) == 2 else 1
    pixels = parts * part[0] * part[1] // max(1, planes)
    if pixels > 2 * max_pixels:
        raise StructureTooCostly(too_many_tile_pixels_message(parts, pixels, 2 * max_pixels))


def _tile_side_limit(side: int) -> int:
    return max(-(-side // 16) * 16, TIFF_FREE_TILE_SIDE)
