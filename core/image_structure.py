"""Walking an upload's container structure within limits, before Pillow parses it.

Pillow identifies a file by walking its parts in Python: every PNG chunk before the pixels, every
GIF block to count frames, every JPEG marker byte. A small file of millions of empty parts then
costs seconds of the API's CPU before any limit applies. So the probe (core.formats.probe_image)
first walks PNG chunks and GIF blocks itself, counting as it goes and stopping as soon as a limit is
passed, and then hands Pillow a reader that refuses past a number of reads and bytes: whatever the
format, identifying an upload costs a bounded amount of work.

Only the structure is read here (lengths and types, seeking over the rest); a file that is damaged
is left for Pillow to judge, so damaged files keep the answers they had.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from collections.abc import Callable
from typing import BinaryIO

from PIL.PngImagePlugin import MAX_TEXT_CHUNK, MAX_TEXT_MEMORY

# A PNG written by libpng has one IDAT chunk per 8 KiB of pixel data: 3,200 for a 25 MiB file; an
# APNG has two or three chunks per frame. Each chunk costs Pillow's Python code ~15 µs.
PNG_MAX_CHUNKS = 20_000
# The limits Pillow itself applies to PNG text and ICC profiles (it refuses beyond, without saying
# why): a compressed chunk's size once inflated, and all text together.
PNG_MAX_INFLATED_CHUNK_BYTES = MAX_TEXT_CHUNK
PNG_MAX_TEXT_BYTES = MAX_TEXT_MEMORY
# GIF encoders write data in blocks of 255 bytes: 250,000 blocks hold over 60 MB of image data.
GIF_MAX_BLOCKS = 250_000
# libjpeg decodes a progressive JPEG scan by scan, each a pass over the whole picture, and sets no
# limit of its own: a 0.5 MB file of thousands of scans cost 19 s of CPU. Encoders write 6 to 12
# (libjpeg's and mozjpeg's scripts); 100 is far above any of them. Segments: markers before the
# pixels, for the walk's own bound (a camera JPEG has about a dozen).
JPEG_MAX_SCANS = 100
JPEG_MAX_SEGMENTS = 10_000
# How much of a JPEG is read to find its frame header before the file is mapped whole.
JPEG_HEAD_BYTES = 64 * 1024
# What Pillow may do to identify any file once the walk above passed: reads (each a call into
# Python code) and bytes (at most each byte twice, plus the little it reads more than once).
MAX_PROBE_READS = 100_000
PROBE_BYTES_SLACK = 64 * 1024
# A quick probe's reads and seeks (and JPEG segments walked), for an identification cheap enough to
# run on an event loop: an ordinary JPEG, PNG, WebP, TIFF or AVIF takes 7 to 110 (BENCHMARKS.md); a
# file of many small parts (PNG chunks, GIF blocks, JPEG segments, TIFF tags, HEIF boxes) passes
# this within about 2 ms, and is then probed again with the full limits elsewhere (api/uploads.py).
# A GIF's frames are walked block by block, thousands of reads: a GIF always goes there.
QUICK_PROBE_READS = 250

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")

PNG_TOO_MANY_CHUNKS = f"PNG has more than {PNG_MAX_CHUNKS:,} chunks; the limit is {PNG_MAX_CHUNKS:,}."
PNG_TEXT_TOO_LARGE = f"PNG text metadata is larger than {PNG_MAX_TEXT_BYTES:,} bytes in all."
GIF_TOO_MANY_BLOCKS = (
    f"GIF is split into more than {GIF_MAX_BLOCKS:,} blocks; the limit is {GIF_MAX_BLOCKS:,}."
)
JPEG_TOO_MANY_SCANS = (
    f"JPEG has more than {JPEG_MAX_SCANS:,} progressive scans; the limit is {JPEG_MAX_SCANS:,} "
    "(each scan is a pass over the whole picture)."
)
JPEG_TOO_MANY_SEGMENTS = (
    f"JPEG has more than {JPEG_MAX_SEGMENTS:,} marker segments; the limit is {JPEG_MAX_SEGMENTS:,}."
)
TOO_COSTLY_TO_READ = (
    f"The file is made of too many small parts: identifying it takes more than {MAX_PROBE_READS:,} "
    "reads or more than twice its size in bytes."
)


def png_metadata_too_large_message(kind: str) -> str:
    return (
        f"PNG metadata chunk {kind} is larger than {PNG_MAX_INFLATED_CHUNK_BYTES:,} bytes "
        f"once decompressed; the limit is {PNG_MAX_INFLATED_CHUNK_BYTES:,}."
    )


class StructureTooCostly(Exception):
    """The file's parts are too many or too large to identify it cheaply; the message says which.

    Not a ValueError: Pillow's plugins catch those while they parse, and this must get through."""


def check_png_chunks(file: BinaryIO) -> None:
    """Walk the chunks of the PNG in `file` (positioned anywhere) up to PNG_MAX_CHUNKS, and check
    its text and ICC chunks against the limits Pillow applies, so a refusal can say why."""
    size = file.seek(0, 2)
    file.seek(len(PNG_SIGNATURE))
    chunks = 0
    text_bytes = 0
    while True:
        head = file.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        chunks += 1
        if chunks > PNG_MAX_CHUNKS:
            raise StructureTooCostly(PNG_TOO_MANY_CHUNKS)
        if kind == b"IEND":
            return
        if kind in _TEXT_CHUNKS or kind == b"iCCP":
            # No more than the file holds: read(n) allocates n bytes first, and a chunk may claim 2 GB.
            content = _metadata_size(kind, file.read(min(length, size - file.tell())))
            if content is None:
                raise StructureTooCostly(png_metadata_too_large_message(kind.decode("latin-1")))
            if kind in _TEXT_CHUNKS:
                text_bytes += content
                if text_bytes > PNG_MAX_TEXT_BYTES:
                    raise StructureTooCostly(PNG_TEXT_TOO_LARGE)
            file.seek(4, 1)
        else:
            file.seek(length + 4, 1)


def _metadata_size(kind: bytes, data: bytes) -> int | None:
    """The size of a text or ICC chunk's content, inflated when it is compressed; None when it
    inflates past PNG_MAX_INFLATED_CHUNK_BYTES. Malformed content counts as its raw size."""
    _, _, rest = data.partition(b"\0")
    compressed: bytes | None = None
    if kind in (b"zTXt", b"iCCP"):
        compressed = rest[1:]
    elif kind == b"iTXt" and len(rest) >= 2 and rest[0] != 0 and rest[1] == 0:
        parts = rest[2:].split(b"\0", 2)
        compressed = parts[2] if len(parts) == 3 else None
    if compressed is None:
        return len(rest)
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(compressed, PNG_MAX_INFLATED_CHUNK_BYTES)
    except zlib.error:
        return len(rest)
    return None if inflater.unconsumed_tail else len(text)


def count_gif_frames(file: BinaryIO, stop_after: int) -> int:
    """The number of frames of the GIF in `file`, counting no further than `stop_after`.

    Frames are counted as Pillow counts them (image descriptors before the trailer or the end of
    the file; a stray byte between blocks is skipped), so the answer is Pillow's `n_frames` when
    it is below `stop_after`. Every block walked counts against GIF_MAX_BLOCKS.
    """
    file.seek(10)
    flags = file.read(3)[:1]
    if flags and flags[0] & 0x80:  # global colour table
        file.seek(3 << ((flags[0] & 7) + 1), 1)
    frames = 0
    blocks = 0
    while True:
        introducer = file.read(1)
        if not introducer or introducer == b";":
            return frames
        blocks += 1
        if blocks > GIF_MAX_BLOCKS:
            raise StructureTooCostly(GIF_TOO_MANY_BLOCKS)
        if introducer == b"!":
            file.read(1)  # the extension's label
        elif introducer == b",":
            descriptor = file.read(9)
            if len(descriptor) < 9:
                return frames
            frames += 1
            if frames >= stop_after:
                return frames
            if descriptor[8] & 0x80:  # local colour table
                file.seek(3 << ((descriptor[8] & 7) + 1), 1)
            file.read(1)  # LZW minimum code size
        else:
            continue
        blocks = _skip_sub_blocks(file, blocks)


def _skip_sub_blocks(file: BinaryIO, blocks: int) -> int:
    while True:
        blocks += 1
        if blocks > GIF_MAX_BLOCKS:
            raise StructureTooCostly(GIF_TOO_MANY_BLOCKS)
        size = file.read(1)
        if not size or size[0] == 0:
            return blocks
        file.seek(size[0], 1)


JPEG_SIGNATURE = b"\xff\xd8\xff"
# Start-of-frame markers of progressive JPEGs (Huffman and arithmetic coded); a sequential JPEG's
# scans are one per component at most, so its scans are not counted.
_PROGRESSIVE_SOF = (0xC2, 0xC6, 0xCA, 0xCE)
_STANDALONE = (0x01, *range(0xD0, 0xD8))  # TEM and RSTn: no length follows
_MARKER = re.compile(rb"\xff+([^\xff])")  # fill bytes, then a marker
_START_OF_SCAN = b"\xff\xda"


def check_jpeg_scans(file: BinaryIO) -> None:
    """Count the scans of the progressive JPEG in `file` and refuse past JPEG_MAX_SCANS.

    The segments before the pixels are walked by their lengths (so metadata holding the bytes of a
    marker does not count). From the first scan on, start-of-scan markers are counted in the bytes
    (at C speed, on a map of the file): pixel data cannot hold one (a 0xFF there is followed by 0x00
    or a restart marker). Anything that does in the segments between scans counts too, which errs
    on the side of refusing a crafted file. A sequential JPEG stops at its frame header; a
    malformed one ends the walk, for Pillow to judge.

    The walk starts on the file's first JPEG_HEAD_BYTES, read once: a sequential JPEG's frame header
    is nearly always there, and mapping the file costs more than the walk (it showed as 3.5 % of the
    API's CPU under load). Only a walk that goes past them maps the whole file.
    """
    size = file.seek(0, 2)
    if size < len(JPEG_SIGNATURE):
        return
    file.seek(0)
    head = file.read(JPEG_HEAD_BYTES)
    # Under a quick probe (QuickReader) each segment walked counts too: they are walked in memory.
    spend = file.spend if isinstance(file, QuickReader) else None
    if _walk_jpeg(head, whole=len(head) == size, spend=spend):
        return
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        _walk_jpeg(data, whole=True, spend=spend)


def _walk_jpeg(data: bytes | mmap.mmap, *, whole: bool, spend: Callable[[], None] | None) -> bool:
    """check_jpeg_scans' walk over `data`, the whole file or its beginning; False when the walk
    needs more of the file than its beginning."""
    size = len(data)
    position = 2
    for _ in range(JPEG_MAX_SEGMENTS):
        if spend is not None:
            spend()
        found = _MARKER.match(data, position)
        if found is None or found.end() + 2 > size:
            # The end of the bytes here: of the file (malformed or cut short: Pillow judges it), of
            # a malformed beginning, or of a beginning that a marker or its length runs past.
            return whole or (found is None and position < size and data[position] != 0xFF)
        marker, position = found[1][0], found.end()
        if marker == 0xD9:  # the end, before any scan
            return True
        if marker in _STANDALONE:
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and marker not in _PROGRESSIVE_SOF:
            return True  # sequential
        if marker == 0xDA:
            if not whole:
                return False
            for _ in range(JPEG_MAX_SCANS):
                position = data.find(_START_OF_SCAN, position) + 2
                if position == 1:  # not found: this was the last scan
                    return True
            raise StructureTooCostly(JPEG_TOO_MANY_SCANS)
        (length,) = struct.unpack_from(">H", data, position)
        position += length
    raise StructureTooCostly(JPEG_TOO_MANY_SEGMENTS)


class QuickProbeSpent(StructureTooCostly):
    """A quick probe used up QUICK_PROBE_READS: not a refusal, the file needs the full probe."""


class QuickReader:
    """The file under a quick probe: every read and seek counts against QUICK_PROBE_READS, and past
    it QuickProbeSpent is raised (a StructureTooCostly, so every walker lets it through)."""

    def __init__(self, file: BinaryIO, budget: int = QUICK_PROBE_READS) -> None:
        self._file = file
        self._left = budget

    def spend(self) -> None:
        """Count one unit of work (check_jpeg_scans' walk counts its segments here)."""
        self._left -= 1
        if self._left < 0:
            raise QuickProbeSpent("identifying this file takes more than a quick probe")

    def read(self, size: int = -1) -> bytes:
        self.spend()
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.spend()
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class BoundedReader:
    """A read-only file for Pillow that refuses (StructureTooCostly) past `max_reads` reads or
    `max_bytes` bytes: whatever Pillow walks to identify a file, it stops there."""

    def __init__(self, file: BinaryIO, *, max_reads: int, max_bytes: int) -> None:
        self._file = file
        self._reads_left = max_reads
        self._bytes_left = max_bytes

    def read(self, size: int = -1) -> bytes:
        self._reads_left -= 1
        if self._reads_left < 0:
            raise StructureTooCostly(TOO_COSTLY_TO_READ)
        data = self._file.read(size)
        self._bytes_left -= len(data)
        if self._bytes_left < 0:
            raise StructureTooCostly(TOO_COSTLY_TO_READ)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True
