"""HEIC, AVIF and TIFF samples made by real encoders in the tests, the bombs built on them, and ICC
profiles of the colour spaces phones and presses use (no binary files live in git).

HEIC is encoded with pillow-heif (dev requirements only: it bundles the GPL x265 encoder; the worker
decodes with pi-heif). It is used through its own API, never registered as Pillow's HEIF plugin, so
that nothing in the test process stands in for the worker's decoder.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageCms

from tests.images import encode

# sRGB's pure red, as a Display P3 picture stores it ((0.9175, 0.2003, 0.1387), 8 bits): a P3 photo of
# a red sign holds these numbers; shown without converting, the red turns dull.
P3_OF_SRGB_RED = (234, 51, 35)
# A press cyan (ISO coated ink), as a press CMYK profile maps 100 % cyan: far from the (0, 255, 255)
# of Pillow's profile-less conversion.
PRESS_CYAN = (0, 160, 225)


def heic(image: Image.Image, *, quality: int = 90, **params: object) -> bytes:
    import pillow_heif  # dev requirements only: imported where used

    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=quality, **params)
    return buffer.getvalue()


def avif(image: Image.Image, **params: object) -> bytes:
    return encode(image, "AVIF", quality=90, **params)


def animated_avif(frames: list[Image.Image], duration: int = 100) -> bytes:
    return encode(frames[0], "AVIF", save_all=True, append_images=frames[1:], duration=duration, quality=80)


def tiff(image: Image.Image, **params: object) -> bytes:
    return encode(image, "TIFF", **params)


def tiff_16_bit_rgb(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """An uncompressed 16-bit RGB TIFF of one colour (8-bit `rgb` scaled to 16 bits), written field
    by field: Pillow writes no 16-bit colour TIFF."""
    pixel = struct.pack("<3H", *(value * 257 for value in rgb))
    data = pixel * (width * height)
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 3, 0),  # BitsPerSample, 3 values: at `bits`
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # Photometric: RGB
        (273, 4, 1, 0),  # StripOffsets: at `pixels`
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, len(data)),  # StripByteCounts
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
    ]
    ifd_at = 8
    bits_at = ifd_at + 2 + 12 * len(entries) + 4
    pixels_at = bits_at + 6
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 273: pixels_at}.get(tag, value)
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16) + data
    return bytes(out)


def tiled_tiff(width: int, height: int, tile: int, tiles: int | None = None) -> bytes:
    """A Deflate greyscale TIFF of `width`×`height` in `tile`×`tile` tiles, written field by field
    (Pillow writes no tiles): as many tiles as the picture needs, or `tiles` of them, all pointing
    at the same compressed data (one black tile)."""
    if tiles is None:
        tiles = -(-width // tile) * -(-height // tile)
    data = zlib.compress(bytes(tile * tile), 9)
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: Deflate
        (262, 3, 1, 1),  # Photometric: black is zero
        (277, 3, 1, 1),  # SamplesPerPixel
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, tiles, 0),  # TileOffsets: at `offsets` (or the data itself, for one)
        (325, 4, tiles, 0),  # TileByteCounts: at `counts` (or the count itself)
    ]
    offsets_at = 8 + 2 + 12 * len(entries) + 4
    counts_at = offsets_at + 4 * tiles
    data_at = counts_at + 4 * tiles
    arrays = {324: (offsets_at, data_at), 325: (counts_at, len(data))}
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag in arrays:
            value = arrays[tag][0] if tiles > 1 else arrays[tag][1]
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0)
    out += struct.pack(f"<{tiles}I", *[data_at] * tiles) + struct.pack(f"<{tiles}I", *[len(data)] * tiles)
    return bytes(out + data)


def with_tiff_compression(data: bytes, compression: int) -> bytes:
    """A little-endian TIFF `data` whose first page's Compression tag says `compression`."""
    out = bytearray(data)
    (first,) = struct.unpack_from("<I", out, 4)
    (tags,) = struct.unpack_from("<H", out, first)
    for entry in range(first + 2, first + 2 + 12 * tags, 12):
        if struct.unpack_from("<H", out, entry)[0] == 259:
            struct.pack_into("<H", out, entry + 8, compression)
    return bytes(out)


def tiff_pages(count: int) -> bytes:
    """A TIFF of `count` one-pixel pages, as Pillow writes multi-page TIFFs."""
    pages = [Image.new("L", (1, 1), index % 256) for index in range(count)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, body: bytes) -> bytes:
    return _box(kind, bytes([version, 0, 0, 0]) + body)


def heic_grid_of_tiles(tiles: int, tile_size: int = 512) -> bytes:
    """A HEIC whose primary picture is a grid of `tiles` tiles (the HEVC data left out: the limits
    must refuse it before any decoder looks)."""
    columns = max(1, int(tiles**0.5))
    rows = -(-tiles // columns)
    items = [(1, b"grid")] + [(2 + index, b"hvc1") for index in range(tiles)]
    iinf = _full_box(
        b"iinf",
        1,
        struct.pack(">I", len(items))
        + b"".join(
            _full_box(b"infe", 2, struct.pack(">HH4s", item, 0, kind) + b"\0") for item, kind in items
        ),
    )
    references = b"".join(struct.pack(">H", 2 + index) for index in range(tiles))
    dimg = _box(b"dimg", struct.pack(">HH", 1, tiles) + references)
    iref = _full_box(b"iref", 0, dimg)
    ipco = _box(
        b"ipco",
        _full_box(b"ispe", 0, struct.pack(">II", columns * tile_size, rows * tile_size))
        + _full_box(b"ispe", 0, struct.pack(">II", tile_size, tile_size)),
    )
    associations = [(1, 1)] + [(2 + index, 2) for index in range(tiles)]
    ipma = _full_box(
        b"ipma",
        0,
        struct.pack(">I", len(associations))
        + b"".join(struct.pack(">HBB", item, 1, 0x80 | prop) for item, prop in associations),
    )
    meta = _full_box(
        b"meta",
        0,
        _full_box(b"hdlr", 0, b"\0" * 4 + b"pict" + b"\0" * 13)
        + _full_box(b"pitm", 0, struct.pack(">H", 1))
        + iinf
        + iref
        + _box(b"iprp", ipco + ipma),
    )
    return _box(b"ftyp", b"heic\0\0\0\0mif1heic") + meta + _box(b"mdat", b"")


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """`data` (a HEIF or AVIF) with every `ispe` (image size) property claiming `width`×`height`."""
    out = bytearray(data)
    position = out.find(b"ispe")
    while position != -1:
        struct.pack_into(">II", out, position + 8, width, height)
        position = out.find(b"ispe", position + 4)
    return bytes(out)


def with_track_size(data: bytes, width: int, height: int) -> bytes:
    """An animated AVIF `data` whose tracks' sample entries (`stsd`) claim frames of `width`×`height`
    (their `ispe`, the still picture's, left as encoded)."""
    out = bytearray(data)
    position = out.find(b"stsd")
    while position != -1:
        # version+flags and entry count, the entry's box header, 24 bytes of reserved fields.
        struct.pack_into(">HH", out, position + 4 + 8 + 8 + 24, width, height)
        position = out.find(b"stsd", position + 4)
    return bytes(out)


def with_zeroed_picture_data(data: bytes) -> bytes:
    """`data` (a HEIF or AVIF) with everything in its `mdat` box zeroed: boxes intact, no bitstream."""
    start = data.index(b"mdat") + 4
    return data[:start] + bytes(len(data) - start)


# ICC profiles, written tag by tag (Pillow ships only sRGB): a matrix/curves display profile, and a
# CMYK printer profile with a lookup table.


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_text = text.encode() + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text + b"\0" * (4 + 4 + 2 + 1 + 67)


def _profile(device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table = struct.pack(">I", len(tags))
    body = b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += struct.pack(">4sII", signature, offset + len(body), len(data))
        body += data
    header = bytearray(128)
    struct.pack_into(">I", header, 0, 128 + table_size + len(body))
    header[8:12] = b"\x02\x10\0\0"
    header[12:16], header[16:20], header[20:24] = device_class, space, pcs
    header[36:40] = b"acsp"
    header[68:80] = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    return bytes(header) + table + body


def _rgb_profile(name: str, primaries: tuple[tuple[float, float, float], ...], curve: bytes) -> bytes:
    red, green, blue = primaries
    return _profile(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        [
            (b"desc", _desc(name)),
            (b"wtpt", _xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", _xyz(*red)),
            (b"gXYZ", _xyz(*green)),
            (b"bXYZ", _xyz(*blue)),
            (b"rTRC", curve),
            (b"gTRC", curve),
            (b"bTRC", curve),
        ],
    )


def display_p3_profile() -> bytes:
    """Display P3 (what iPhones embed): P3 primaries adapted to D50, sRGB's tone curve."""
    curve = b"para\0\0\0\0" + struct.pack(">HH", 3, 0)
    curve += b"".join(_s15(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    primaries = (
        (0.515102, 0.241196, -0.001053),
        (0.291965, 0.692236, 0.041885),
        (0.157153, 0.066568, 0.784097),
    )
    return _rgb_profile("Display P3", primaries, curve)


def adobe_rgb_profile() -> bytes:
    """Adobe RGB (1998): its primaries adapted to D50, gamma 563/256."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233)
    primaries = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457))
    return _rgb_profile("Adobe RGB (1998)", primaries, curve)


_INKS = {"C": PRESS_CYAN, "M": (230, 0, 126), "Y": (255, 237, 0), "K": (35, 31, 32)}


def cmyk_press_profile() -> bytes:
    """A CMYK printer profile (lut8 A2B0, Lab connection space) whose inks are press-like colours
    (PRESS_CYAN, ...) layered by multiplication: converting through it differs from Pillow's
    profile-less conversion."""
    corners = []
    for index in range(16):  # the first channel (C) varies slowest
        levels = [(index >> shift) & 1 for shift in (3, 2, 1, 0)]
        rgb = [1.0, 1.0, 1.0]
        for on, ink in zip(levels, "CMYK", strict=True):
            if on:
                rgb = [channel * value / 255 for channel, value in zip(rgb, _INKS[ink], strict=True)]
        corners.append(tuple(round(channel * 255) for channel in rgb))
    swatch = Image.new("RGB", (16, 1))
    swatch.putdata(corners)
    lab = ImageCms.applyTransform(
        swatch,
        ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"),
    )
    assert lab is not None
    clut = b"".join(bytes(lab.getpixel((index, 0))) for index in range(16))  # type: ignore[arg-type]
    identity = bytes(range(256))
    matrix = b"".join(_s15(1.0 if row == column else 0.0) for row in range(3) for column in range(3))
    lut = b"mft1\0\0\0\0" + bytes([4, 3, 2, 0]) + matrix + identity * 4 + clut + identity * 3
    return _profile(
        b"prtr",
        b"CMYK",
        b"Lab ",
        [(b"desc", _desc("Press CMYK (test)")), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"A2B0", lut)],
    )
