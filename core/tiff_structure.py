"""Counting a TIFF's pages within limits, before Pillow parses it.

A TIFF is a chain of image file directories (IFDs), one per page, each a list of tags. Pillow reads
only the first to open a file, but counting pages (`n_frames`) makes it parse every directory in
Python, and nothing bounds the chain: a small file can hold thousands of pages, or a loop. This walk
follows the chain by its offsets alone (reading each directory's two-byte entry count and next
offset, never its tags), stops one page past the limit, and refuses a loop or an offset past the end.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

TIFF_SIGNATURES = (b"II*\0", b"MM\0*")
BIGTIFF_SIGNATURES = (b"II+\0", b"MM\0+")
# Tags a page may have: a scanner or camera writes 15 to 60.
TIFF_MAX_TAGS = 4_096


class Damaged(ValueError):
    """The directory chain is malformed: no decoder could use it."""


def count_tiff_pages(file: BinaryIO, stop_after: int) -> int:
    """The number of pages of the classic TIFF in `file`, counting no further than `stop_after`."""
    size = file.seek(0, 2)
    file.seek(0)
    head = file.read(8)
    if len(head) < 8 or head[:4] not in TIFF_SIGNATURES:
        raise Damaged("not a classic TIFF")
    order = "<" if head[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", head[4:])
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
