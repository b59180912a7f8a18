"""Images made by the tests with Pillow, as bytes (no binary files live in git)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import ExifTags, Image, ImageCms, ImageDraw, ImageFilter


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo(width: int = 320, height: int = 240) -> Image.Image:
    """A smooth gradient: compresses like a photo and has no red near the top-left corner."""
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge(
        "RGB", (gradient.point(lambda v: v // 4), gradient, Image.new("L", (width, height), 200))
    )


def jpeg(width: int = 320, height: int = 240, **params) -> bytes:
    return encode(photo(width, height), "JPEG", quality=90, **params)


def png(width: int = 64, height: int = 48) -> bytes:
    return encode(photo(width, height), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` pixels: a decompression bomb's calling card."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    """A JPEG cut off after its header: identifies fine, cannot be decoded."""
    data = jpeg(640, 480)
    return data[: len(data) // 3]


def red_share(image: Image.Image, box: tuple[int, int, int, int]) -> float:
    """The share of the pixels inside `box` that are clearly red (the watermark's colour)."""
    pixels = list(image.convert("RGB").crop(box).get_flattened_data())
    return sum(1 for r, g, b in pixels if r > 150 and g < 90 and b < 90) / len(pixels)


def photo_like(width: int, height: int) -> bytes:
    """A JPEG that costs what a photo costs to decode: gradients, shapes and sensor-like noise
    (a flat or smooth picture decodes several times faster than a real one)."""
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.linear_gradient("L").rotate(90).resize((width, height)),
        ),
    )
    draw = ImageDraw.Draw(base)
    for index in range(12):
        left, top = (index * 97) % width, (index * 61) % height
        draw.ellipse(
            (left, top, left + width // 5, top + height // 6), fill=(30 * index % 255, 90, 200 - index * 9)
        )
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    image = Image.blend(base, noise, 0.25).filter(ImageFilter.SMOOTH)
    return encode(image, "JPEG", quality=90)


def personal_exif() -> Image.Exif:
    """EXIF a person would not want published: a name, a camera and a GPS position."""
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Jane Doe"
    exif[ExifTags.Base.Make] = "CameraMaker"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 22.0, 1.0),
    }
    return exif


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description dc:creator="secret-xmp"/></x:xmpmeta>'


# Files whose structure is cheap to write and costly to walk: many tiny parts (core.image_structure).


def png_with_chunks(*chunks: tuple[bytes, bytes], count: int = 1) -> bytes:
    """A valid 1×1 grey PNG with `chunks` (type, data) repeated `count` times before its pixels."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    extra = b"".join(_png_chunk(kind, data) for kind, data in chunks) * count
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + extra
        + _png_chunk(b"IDAT", zlib.compress(b"\0\0"))
        + _png_chunk(b"IEND", b"")
    )


def png_with_empty_chunks(count: int) -> bytes:
    """`count` empty private chunks (12 bytes each) before the pixels: 2,000,000 make 24 MB."""
    return png_with_chunks((b"abCd", b""), count=count)


def _gif(body: bytes) -> bytes:
    # A 1×1 screen with a two-colour global palette, then `body`, then the trailer.
    return b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff" + body + b";"


def gif_with_tiny_frames(count: int) -> bytes:
    """`count` frames of 1×1 pixel, 15 bytes each: 1,000,000 make 15 MB."""
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return _gif(frame * count)


def gif_with_tiny_blocks(count: int) -> bytes:
    """One frame whose pixel data is split into `count` sub-blocks of one byte (encoders use 255)."""
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02" + b"\x01\x44" * count + b"\x00"
    return _gif(frame)


def jpeg_with_fill_bytes(count: int) -> bytes:
    """A small JPEG with `count` 0xFF fill bytes after its start marker (legal; Pillow reads each)."""
    data = encode(Image.new("L", (8, 8)), "JPEG")
    return data[:2] + b"\xff" * count + data[2:]


def jpeg_with_scans(extra: int, width: int = 256, height: int = 256) -> bytes:
    """A progressive JPEG whose last scan is repeated `extra` more times: each repeat costs libjpeg
    another pass over the picture. Pillow's encoder writes 10 scans for a colour picture."""
    data = encode(photo(width, height), "JPEG", progressive=True, quality=90)
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * extra + data[end:]


def icc_profile(size: int = 0, *, swap_red_and_blue: bool = False) -> bytes:
    """A real RGB ICC profile (LittleCMS's sRGB) padded with a private tag to about `size` bytes;
    with `swap_red_and_blue`, its red and blue primaries trade places, so converting from it to
    sRGB changes colours visibly (red turns blue)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    (count,) = struct.unpack_from(">I", profile, 128)
    entries = [list(struct.unpack_from(">4sII", profile, 132 + 12 * index)) for index in range(count)]
    if swap_red_and_blue:
        red = next(entry for entry in entries if entry[0] == b"rXYZ")
        blue = next(entry for entry in entries if entry[0] == b"bXYZ")
        red[1:], blue[1:] = blue[1:], red[1:]
    body = profile[132 + 12 * count :]
    # One more table entry moves every tag 12 bytes on; the padding tag goes last, 4-byte aligned.
    padding_at = len(profile) + 12 + (-(len(profile) + 12)) % 4
    entries = [[sig, offset + 12, length] for sig, offset, length in entries]
    entries.append([b"zzzz", padding_at, size])
    table = struct.pack(">I", len(entries)) + b"".join(struct.pack(">4sII", *entry) for entry in entries)
    out = bytearray(profile[:128] + table + body)
    out += bytes(padding_at - len(out) + size)
    struct.pack_into(">I", out, 0, len(out))
    return bytes(out)
