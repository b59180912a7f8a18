"""Reading a HEIF or AVIF file's structure (ISO base media file format boxes) within limits.

HEIC (what phones shoot) and AVIF share one container: boxes of a size and a type, a `meta` box that
lists the file's items (the picture, its tiles, thumbnails, EXIF) with their properties (`ispe`: the
size; `irot`: a quarter turn; `clap`: a crop) and references (`dimg`: the tiles of a grid), and for an
animated AVIF a `moov` box whose tracks count their frames. A decoder (libheif, libavif) reads all of
that and then decodes every tile of the picture, so everything that makes a decode expensive is in
these boxes: the picture's size, how many tiles it is cut into, how many frames it has.

Except one thing: the size an AV1 picture is coded at is in its own bitstream (the sequence header),
not in the boxes, and libavif decodes whatever that says before it compares it with `ispe`; a
3-KB file declaring 64×64 can be coded at 16,384×16,384. So for every AV1 item (the picture, its
tiles, its alpha) and every sample of every AV1 track (a sequence header may come again in any
frame, and a new one may change the size), the sequence headers are read from the first
AV1_HEADER_BUDGET bytes of its data (what the decoder reads: they come before the frame) and their
maximum frame size must fit the declared one.

This walk reads them without decoding anything, so the API can refuse a bomb at upload with no HEIF
library at all: it seeks over pixel data, reads only the small boxes it needs, and stops at
HEIF_MAX_BOXES parts (boxes, items, property links), HEIF_MAX_ITEMS items or HEIF_MAX_META_BYTES of
`meta`, whatever the bytes say.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from core.image_structure import StructureTooCostly

# An iPhone's HEIC has about 100 items (48 or 192 tiles, a thumbnail, EXIF, depth and gain maps); a
# 16,384 x 16,384 picture in libheif's 512-pixel tiles has 1,024 tiles. Each item and tile costs the
# decoder a setup; a crafted file can list hundreds of thousands in a few megabytes.
HEIF_MAX_ITEMS = 4_096
HEIF_MAX_TILES = 1_024
# Boxes, item entries and property associations walked in all: each costs this walk a Python step;
# an iPhone's HEIC has about 2,000, a grid of HEIF_MAX_TILES tiles about 6,000.
HEIF_MAX_BOXES = 50_000
# The `meta` box (item lists, locations, properties) is read whole: an iPhone's is under 10 KB.
HEIF_MAX_META_BYTES = 4 * 1024 * 1024

HEIF_TOO_MANY_ITEMS = f"HEIF has more than {HEIF_MAX_ITEMS:,} items; the limit is {HEIF_MAX_ITEMS:,}."
HEIF_TOO_MANY_BOXES = (
    f"HEIF has more than {HEIF_MAX_BOXES:,} boxes, items and properties; the limit is {HEIF_MAX_BOXES:,}."
)
HEIF_META_TOO_LARGE = f"HEIF metadata (its meta box) is larger than {HEIF_MAX_META_BYTES:,} bytes."


def too_many_tiles_message(tiles: int) -> str:
    return f"HEIF picture is cut into {tiles:,} tiles; the limit is {HEIF_MAX_TILES:,}."


# An AV1 item's or sample's data starts with its sequence header, if any (after a temporal delimiter,
# perhaps metadata), then its frame: libavif writes the frame within 20 bytes. No frame reached
# within this many bytes, the file is treated as damaged.
AV1_HEADER_BUDGET = 1024
# A frame is coded at its declared size; allow up to AV1's largest superblock (128 pixels) over it,
# so a liar decodes no more than an honest file of its declared size would, give or take an edge.
AV1_SIZE_SLACK = 128
_OBU_SEQUENCE_HEADER = 1
# Frame header, tile group, frame, redundant frame header, tile list: past the sequence headers.
_OBU_FRAME_TYPES = frozenset({3, 4, 6, 7, 8})


def coded_size_message(declared: tuple[int, int], coded: tuple[int, int]) -> str:
    return (
        f"AVIF picture declares {declared[0]:,}×{declared[1]:,} pixels but is coded at "
        f"{coded[0]:,}×{coded[1]:,}."
    )


# Brands (ftyp) that say which codec the file holds. `mif1`/`msf1` alone say only "HEIF": then the
# primary item's type decides (av01 or hvc1).
AVIF_BRANDS = frozenset({b"avif", b"avis"})
HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"miaf"}) | AVIF_BRANDS | HEIC_BRANDS
_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})


class Damaged(ValueError):
    """The structure is malformed or cut short: no decoder could use it."""


@dataclass(frozen=True)
class HeifStructure:
    format: str  # "HEIF" or "AVIF"
    width: int  # as displayed: after the primary item's clean aperture and quarter turn
    height: int
    frames: int  # 1 for a still picture; an image sequence's sample count
    # Pixels decoded in all: the coded size (before any crop), or every tile of a grid, or the
    # largest track's frame size.
    decoded_pixels: int
    tiles: int


def is_heif(head: bytes) -> bool:
    """Whether `head` (the file's first 12 bytes or more) starts an ISOBMFF file of a HEIF brand."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return False
    return head[8:12] in HEIF_BRANDS


def read_heif(file: BinaryIO, *, max_frames: int) -> HeifStructure:
    """Walk the top-level boxes of `file`, the `meta` box whole and `moov` down to its sample tables.

    An AV1 track of more than `max_frames` samples (refused by the caller) has its samples' sequence
    headers left unread.

    Raises Damaged for a malformed or truncated structure, StructureTooCostly past a limit.
    """
    size = file.seek(0, 2)
    file.seek(0)
    boxes = _Counter()
    brands: set[bytes] = set()
    meta: bytes | None = None
    tracks: list[tuple[int, int, int]] = []  # (width, height, samples)
    position = 0
    while position < size:
        kind, start, end = _box_at(file, position, size, boxes)
        if kind == b"ftyp" and position == 0:
            data = _read(file, start, min(end, start + 1024))
            brands = {data[i : i + 4] for i in range(0, len(data) - 3, 4) if i != 4}
        elif kind == b"meta" and meta is None:
            if end - start > HEIF_MAX_META_BYTES:
                raise StructureTooCostly(HEIF_META_TOO_LARGE)
            meta = _read(file, start, end)
        elif kind == b"moov":
            _walk_tracks(file, start, end, boxes, tracks, max_frames)
        position = end
    if not brands & HEIF_BRANDS:
        raise Damaged("not a HEIF brand")
    still = _read_meta(meta, boxes, file) if meta is not None else None
    if still is None and not tracks:
        raise Damaged("no picture")
    if brands & AVIF_BRANDS:
        name = "AVIF"
    elif brands & HEIC_BRANDS:
        name = "HEIF"
    else:
        name = "AVIF" if still is not None and still.codec == b"av01" else "HEIF"
    if tracks:
        width, height, samples = max(tracks, key=lambda track: track[0] * track[1])
        if still is not None:
            # The still picture (shown by readers without animation) is decoded too.
            width, height = max((width, height), (still.width, still.height), key=lambda wh: wh[0] * wh[1])
        return HeifStructure(
            name, width, height, max(1, samples), max(width * height, still.decoded if still else 0), 1
        )
    assert still is not None
    return HeifStructure(name, still.width, still.height, 1, still.decoded, still.tiles)


class _Counter:
    def __init__(self) -> None:
        self.boxes = 0

    def count(self) -> None:
        self.boxes += 1
        if self.boxes > HEIF_MAX_BOXES:
            raise StructureTooCostly(HEIF_TOO_MANY_BOXES)


def _box_at(file: BinaryIO, position: int, limit: int, boxes: _Counter) -> tuple[bytes, int, int]:
    """The box at `position` (within a parent ending at `limit`): its type, where its content starts
    and where it ends."""
    boxes.count()
    head = _read(file, position, position + 8, limit)
    length, kind = struct.unpack(">I4s", head)
    start = position + 8
    if length == 1:
        (length,) = struct.unpack(">Q", _read(file, start, start + 8, limit))
        start += 8
    elif length == 0:  # to the end of the parent
        length = limit - position
    if length < start - position or position + length > limit:
        raise Damaged("box runs past its parent or the file")
    return kind, start, position + length


def _read(file: BinaryIO, start: int, end: int, limit: int | None = None) -> bytes:
    if limit is not None and end > limit:
        raise Damaged("cut short")
    file.seek(start)
    data = file.read(end - start)
    if len(data) != end - start:
        raise Damaged("cut short")
    return data


@dataclass
class _Track:
    entry: bytes = b""  # the first sample entry's type: av01 for AV1
    width: int = 0
    height: int = 0
    samples: int = 0
    size: int = 0  # every sample's size, or 0: `sizes` lists them
    sizes: bytes = b""
    chunks: tuple[int, ...] = ()  # each chunk's offset in the file
    runs: tuple[tuple[int, int], ...] = ()  # (first chunk, from 1; samples in each chunk from there)


def _walk_tracks(
    file: BinaryIO,
    start: int,
    end: int,
    boxes: _Counter,
    tracks: list[tuple[int, int, int]],
    max_frames: int,
) -> None:
    """Each track's coded frame size (its first visual sample entry) and sample count, from
    moov/trak/mdia/minf/stbl: stsd and stsz are read and, for an AV1 track of at most `max_frames`
    samples, stsz's sizes, stsc and stco/co64, to find every sample and check its sequence headers."""
    track = _Track()

    def table(content: int, box_end: int, entry: int, count: int) -> bytes:
        return _read(file, content, content + entry * count, box_end)

    def walk(position: int, limit: int, depth: int) -> None:
        nonlocal track
        while position < limit:
            kind, content, box_end = _box_at(file, position, limit, boxes)
            if kind in _CONTAINERS and depth < 5:
                if kind == b"trak":
                    track = _Track()
                walk(content, box_end, depth + 1)
                if kind == b"trak":
                    tracks.append((track.width, track.height, track.samples))
                    if track.entry == b"av01" and track.samples <= max_frames:
                        _check_samples(file, track, boxes)
            elif kind == b"stsd":
                # version+flags, entry count, then the first sample entry's box header; a visual
                # entry's width and height follow 24 bytes of reserved and reference fields.
                entry = _read(file, content, min(box_end, content + 8 + 8 + 28), box_end)
                track.entry = entry[12:16]
                track.width, track.height = struct.unpack_from(">HH", entry, 8 + 8 + 24)
            elif kind == b"stsz":
                _, track.size, track.samples = struct.unpack(
                    ">III", _read(file, content, content + 12, box_end)
                )
                if track.size == 0 and track.samples <= max_frames:
                    track.sizes = table(content + 12, box_end, 4, track.samples)
            elif kind in (b"stco", b"co64"):
                # A chunk holds one sample or more: never more chunks than samples worth reading.
                width, code = (8, "Q") if kind == b"co64" else (4, "I")
                _, count = struct.unpack(">II", _read(file, content, content + 8, box_end))
                count = min(count, max_frames)
                track.chunks = struct.unpack(f">{count}{code}", table(content + 8, box_end, width, count))
            elif kind == b"stsc":
                _, count = struct.unpack(">II", _read(file, content, content + 8, box_end))
                runs = table(content + 8, box_end, 12, min(count, max_frames))
                track.runs = tuple(struct.unpack_from(">II", runs, at) for at in range(0, len(runs), 12))
            position = box_end

    walk(start, end, 0)


def _check_samples(file: BinaryIO, track: _Track, boxes: _Counter) -> None:
    """Check the sequence headers of each sample of an AV1 track against its declared frame size:
    samples follow one another within a chunk, chunks hold as many as their run of stsc says."""
    checked = 0
    for index, (first, per_chunk) in enumerate(track.runs):
        last = track.runs[index + 1][0] - 1 if index + 1 < len(track.runs) else len(track.chunks)
        for chunk in range(first, min(last, len(track.chunks)) + 1):
            boxes.count()  # runs may overlap: chunks walked are counted, not only samples read
            if chunk < 1:
                raise Damaged("stsc malformed")
            offset = track.chunks[chunk - 1]
            for _ in range(min(per_chunk, track.samples - checked)):
                boxes.count()
                if track.size:
                    size = track.size
                else:
                    (size,) = struct.unpack_from(">I", track.sizes, 4 * checked)
                data, whole = _read_up_to(file, offset, size or 1)
                _check_coded_size((track.width, track.height), data, whole=whole, first=checked == 0)
                offset += size
                checked += 1
            if checked == track.samples:
                return
    if checked < track.samples:
        raise Damaged("AV1 track's samples lie outside its chunks")


@dataclass(frozen=True)
class _Still:
    codec: bytes
    width: int
    height: int
    decoded: int
    tiles: int


def _read_meta(meta: bytes, boxes: _Counter, file: BinaryIO) -> _Still | None:
    """The primary item of a `meta` box's content: its codec, displayed size and decoding cost.

    Every AV1 item's coded size is checked against its `ispe` on the way (_check_coded_size)."""
    primary: int | None = None
    item_types: dict[int, bytes] = {}
    tiles_of: dict[int, list[int]] = {}
    properties: list[tuple[bytes, bytes]] = []
    associations: dict[int, list[int]] = {}
    locations: dict[int, tuple[int, int, int]] = {}
    idat = b""
    for kind, body in _children(meta, 4, boxes, "meta box"):  # after its version and flags
        if kind == b"pitm":
            primary = struct.unpack_from(">H" if body[0] == 0 else ">I", body, 4)[0]
        elif kind == b"iinf":
            item_types = _item_types(body, boxes)
        elif kind == b"iref":
            tiles_of = _tile_references(body, boxes)
        elif kind == b"iprp":
            properties, associations = _item_properties(body, boxes)
        elif kind == b"iloc":
            locations = _item_locations(body, boxes)
        elif kind == b"idat":
            idat = body
    if primary is None or primary not in item_types:
        return None
    for item, item_type in item_types.items():
        if item_type != b"av01":
            continue
        ispe = _properties_of(item, properties, associations).get("ispe")
        if ispe is None:
            continue  # libavif refuses an AV1 item without a size (the primary's is required below)
        if item not in locations:
            raise Damaged("AV1 item has no data")
        method, offset, length = locations[item]
        if method == 0:
            data, whole = _read_up_to(file, offset, length)
        elif method == 1:
            wanted = min(length or AV1_HEADER_BUDGET, AV1_HEADER_BUDGET)
            data = idat[offset : offset + wanted]
            whole = len(data) < wanted or len(data) == length
        else:
            raise Damaged("AV1 item data by reference")  # libavif does not support it either
        _check_coded_size(struct.unpack_from(">II", ispe, 4), data, whole=whole, first=True)
    codec = item_types[primary]
    own = _properties_of(primary, properties, associations)
    if "ispe" not in own:
        raise Damaged("primary item has no size")
    width, height = struct.unpack_from(">II", own["ispe"], 4)
    decoded = width * height
    tiles = 1
    if codec == b"grid":
        parts = tiles_of.get(primary, [])
        tiles = len(parts)
        if tiles > HEIF_MAX_TILES:
            raise StructureTooCostly(too_many_tiles_message(tiles))
        decoded = 0
        for part in parts:
            tile = _properties_of(part, properties, associations).get("ispe")
            if tile is not None:
                decoded += int.from_bytes(tile[4:8]) * int.from_bytes(tile[8:12])
            codec = item_types.get(part, codec)
        decoded = max(decoded, width * height)
    if "clap" in own:
        clean = struct.unpack_from(">8I", own["clap"])
        if clean[1] and clean[3]:
            width, height = min(width, clean[0] // clean[1]), min(height, clean[2] // clean[3])
    if "irot" in own and own["irot"][0] & 1:
        width, height = height, width
    return _Still(codec, width, height, decoded, tiles)


def _item_locations(body: bytes, boxes: _Counter) -> dict[int, tuple[int, int, int]]:
    """An `iloc` box: each item's construction method (0: in the file, 1: in `idat`), the offset of
    its first extent and that extent's length (0: to the end)."""
    version = body[0]
    at = 4

    def number(size: int) -> int:
        nonlocal at
        if at + size > len(body):
            raise Damaged("iloc cut short")
        value = int.from_bytes(body[at : at + size])
        at += size
        return value

    sizes = number(2)
    offset_size, length_size, base_size = sizes >> 12, sizes >> 8 & 15, sizes >> 4 & 15
    index_size = sizes & 15 if version in (1, 2) else 0
    if any(size not in (0, 4, 8) for size in (offset_size, length_size, base_size, index_size)):
        raise Damaged("iloc malformed")
    id_size = 4 if version == 2 else 2
    count = number(id_size)
    if count > HEIF_MAX_ITEMS:
        raise StructureTooCostly(HEIF_TOO_MANY_ITEMS)
    locations: dict[int, tuple[int, int, int]] = {}
    for _ in range(count):
        boxes.count()
        item = number(id_size)
        method = number(2) & 15 if version in (1, 2) else 0
        number(2)  # data reference index
        base = number(base_size)
        extents = number(2)
        for extent in range(extents):
            boxes.count()
            number(index_size)
            offset, length = number(offset_size), number(length_size)
            if extent == 0:
                locations[item] = (method, base + offset, length)
    return locations


def _read_up_to(file: BinaryIO, offset: int, length: int) -> tuple[bytes, bool]:
    """The first AV1_HEADER_BUDGET bytes (at most) of the `length` bytes (0: to the end) at `offset`
    in the file, and whether that is all of them."""
    wanted = min(length or AV1_HEADER_BUDGET, AV1_HEADER_BUDGET)
    file.seek(offset)
    data = file.read(wanted)
    return data, len(data) < wanted or len(data) == length


def _check_coded_size(declared: tuple[int, int], data: bytes, *, whole: bool, first: bool) -> None:
    """Refuse AV1 `data` (an item's or a sample's, all of it or its first AV1_HEADER_BUDGET bytes)
    with a sequence header that allows frames larger than `declared` (plus AV1_SIZE_SLACK): libavif
    would decode them at that size. The first (or only) picture must have one."""
    found = False
    for coded in _sequence_header_sizes(data, whole=whole):
        found = True
        width, height = declared
        if coded[0] > width + AV1_SIZE_SLACK or coded[1] > height + AV1_SIZE_SLACK:
            raise StructureTooCostly(coded_size_message(declared, coded))
    if first and not found:
        raise Damaged("no AV1 sequence header")


def _sequence_header_sizes(data: bytes, *, whole: bool) -> Iterator[tuple[int, int]]:
    """The maximum frame width and height of each sequence header among the OBUs that precede the
    first frame in `data` (AV1 specification 5.3: a header byte, an optional extension byte, a
    LEB128 size). Not reaching a frame or the end of the data is damage: whatever follows is unread."""
    at = 0
    while at < len(data):
        header = data[at]
        if header >> 3 & 15 in _OBU_FRAME_TYPES:
            return
        at += 1 + (header >> 2 & 1)
        if header >> 1 & 1:
            size = 0
            for index in range(8):
                if at >= len(data):
                    raise Damaged("AV1 OBU cut short")
                size |= (data[at] & 0x7F) << (7 * index)
                at += 1
                if not data[at - 1] & 0x80:
                    break
        else:  # only the last OBU of a sample may leave its size out: it runs to the end
            size = len(data) - at
        if header >> 3 & 15 == _OBU_SEQUENCE_HEADER:
            yield _sequence_header_size(_Bits(data[at : at + size]))
        at += size
    if not whole or at > len(data):
        raise Damaged("no AV1 frame within the bytes read")


class _Bits:
    """A most-significant-bit-first reader of a few bytes that refuses to run past them."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self.position >> 3
            if byte >= len(self.data):
                raise Damaged("AV1 sequence header cut short")
            value = value << 1 | (self.data[byte] >> (7 - (self.position & 7)) & 1)
            self.position += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                raise Damaged("AV1 sequence header malformed")
        return self.read(zeros) + (1 << zeros) - 1


def _sequence_header_size(bits: _Bits) -> tuple[int, int]:
    """max_frame_width_minus_1 + 1 and max_frame_height_minus_1 + 1 of a sequence header OBU's
    payload (AV1 specification 5.5.1), skipping what comes before them."""
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)  # seq_level_idx[0]
    else:
        decoder_model = False
        delay_length = 0
        if bits.read(1):  # timing_info_present_flag
            bits.read(32)  # num_units_in_display_tick
            bits.read(32)  # time_scale
            if bits.read(1):  # equal_picture_interval
                bits.uvlc()  # num_ticks_per_picture_minus_1
            decoder_model = bool(bits.read(1))
            if decoder_model:
                delay_length = bits.read(5) + 1  # buffer_delay_length_minus_1
                bits.read(32)  # num_units_in_decoding_tick
                bits.read(5)  # buffer_removal_time_length_minus_1
                bits.read(5)  # frame_presentation_time_length_minus_1
        display_delay = bool(bits.read(1))  # initial_display_delay_present_flag
        for _ in range(bits.read(5) + 1):  # operating_points_cnt_minus_1
            bits.read(12)  # operating_point_idc
            if bits.read(5) > 7:  # seq_level_idx
                bits.read(1)  # seq_tier
            if decoder_model and bits.read(1):  # decoder_model_present_for_this_op
                bits.read(2 * delay_length + 1)  # decoder and encoder buffer delays, low delay
            if display_delay and bits.read(1):  # initial_display_delay_present_for_this_op
                bits.read(4)  # initial_display_delay_minus_1
    width_bits = bits.read(4) + 1
    height_bits = bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


def _children(data: bytes, start: int, boxes: _Counter, what: str) -> Iterator[tuple[bytes, bytes]]:
    """The boxes inside `data` from `start` on, as (type, content), each counted; Damaged (naming
    `what`) if one is shorter than its header or runs past the end."""
    position = start
    while position + 8 <= len(data):
        boxes.count()
        length, kind = struct.unpack_from(">I4s", data, position)
        if length < 8 or position + length > len(data):
            raise Damaged(f"{what} malformed")
        yield kind, data[position + 8 : position + length]
        position += length


def _item_types(body: bytes, boxes: _Counter) -> dict[int, bytes]:
    version = body[0]
    count = struct.unpack_from(">H" if version == 0 else ">I", body, 4)[0]
    if count > HEIF_MAX_ITEMS:
        raise StructureTooCostly(HEIF_TOO_MANY_ITEMS)
    position = 6 if version == 0 else 8
    types: dict[int, bytes] = {}
    for _ in range(count):
        boxes.count()
        if position + 8 > len(body):
            raise Damaged("iinf cut short")
        length, kind = struct.unpack_from(">I4s", body, position)
        if length < 8 or kind != b"infe":
            raise Damaged("iinf malformed")
        entry = body[position + 8 : position + length]
        if len(entry) >= 12 and entry[0] >= 2:  # versions 2 and 3 carry the item type
            if entry[0] == 2:
                item, item_type = struct.unpack_from(">H2x4s", entry, 4)
            else:
                item, item_type = struct.unpack_from(">I2x4s", entry, 4)
            types[item] = item_type
        position += length
    return types


def _tile_references(body: bytes, boxes: _Counter) -> dict[int, list[int]]:
    """The `dimg` references of an `iref` box: a grid item's tiles, in order."""
    wide = body[0] != 0
    id_format = ">I" if wide else ">H"
    id_size = 4 if wide else 2
    references: dict[int, list[int]] = {}
    count = 0
    for kind, content in _children(body, 4, boxes, "iref"):
        if kind == b"dimg":
            first = id_size + 2
            if len(content) < first:
                raise Damaged("iref malformed")
            (source,) = struct.unpack_from(id_format, content, 0)
            (refs,) = struct.unpack_from(">H", content, id_size)
            count += refs
            if count > HEIF_MAX_ITEMS:
                raise StructureTooCostly(too_many_tiles_message(count))
            if first + refs * id_size > len(content):
                raise Damaged("iref malformed")
            references[source] = [
                struct.unpack_from(id_format, content, first + index * id_size)[0] for index in range(refs)
            ]
    return references


def _item_properties(body: bytes, boxes: _Counter) -> tuple[list[tuple[bytes, bytes]], dict[int, list[int]]]:
    """The `ipco` properties (in order: associations index them from 1) and `ipma` associations
    (each counted as a box: an item may list up to 255)."""
    properties: list[tuple[bytes, bytes]] = []
    associations: dict[int, list[int]] = {}
    for kind, content in _children(body, 0, boxes, "iprp"):
        if kind == b"ipco":
            properties.extend(_children(content, 0, boxes, "ipco"))
        elif kind == b"ipma" and len(content) >= 8:
            version, flags = content[0], int.from_bytes(content[1:4])
            (entries,) = struct.unpack_from(">I", content, 4)
            if entries > HEIF_MAX_ITEMS:
                raise StructureTooCostly(HEIF_TOO_MANY_ITEMS)
            at = 8
            for _ in range(entries):
                item_format, item_size = (">H", 2) if version < 1 else (">I", 4)
                if at + item_size + 1 > len(content):
                    raise Damaged("ipma cut short")
                (item,) = struct.unpack_from(item_format, content, at)
                count = content[at + item_size]
                for _ in range(count):
                    boxes.count()
                at += item_size + 1
                wide = flags & 1
                indices = []
                for _ in range(count):
                    if at + (2 if wide else 1) > len(content):
                        raise Damaged("ipma cut short")
                    if wide:
                        indices.append(struct.unpack_from(">H", content, at)[0] & 0x7FFF)
                        at += 2
                    else:
                        indices.append(content[at] & 0x7F)
                        at += 1
                associations[item] = indices
    return properties, associations


def _properties_of(
    item: int, properties: list[tuple[bytes, bytes]], associations: dict[int, list[int]]
) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for index in associations.get(item, []):
        if 1 <= index <= len(properties):
            kind, content = properties[index - 1]
            found.setdefault(kind.decode("latin-1"), content)
    if "ispe" in found and len(found["ispe"]) < 12:
        raise Damaged("ispe malformed")
    if "clap" in found and len(found["clap"]) < 32:
        del found["clap"]
    if "irot" in found and not found["irot"]:
        del found["irot"]
    return found
