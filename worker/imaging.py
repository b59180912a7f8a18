"""Stamp the watermark onto one image file: all of the worker's Pillow code.

Failures split in two on purpose. Anything wrong with the input (undecodable data, too many
frames or pixels) raises `ImageRejected`, whose message is shown to the person who uploaded it and
which no retry can fix. An `OSError` while writing `dst` (disk full, permissions) or while reading
`src` off a failing disk propagates untouched: it is transient and worth a retry.

The output is a fresh image: only the pixels, the ICC profile and the animation timing are carried
over, so EXIF (GPS, camera owner), XMP, comments and text chunks never leave the worker.

No global state is touched (no `warnings` filters, no `Image.MAX_IMAGE_PIXELS`, no
`ImageFile.LOAD_TRUNCATED_IMAGES`): the worker calls `watermark` from several threads at once.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, ImageDraw, ImageFont

from core.formats import DAMAGED_MESSAGE, ImageRejected, check_animation, open_image

OUTSIDE_MESSAGE = "A frame of the animation lies far outside the picture and cannot be decoded."


@dataclass(frozen=True)
class ProcessedImage:
    format: str
    width: int
    height: int
    frames: int
    size_bytes: int


# Every frame is drawn on in one of these modes; anything else is converted once, up front.
_RED: dict[str, tuple[int, ...]] = {
    "RGB": (255, 0, 0),
    "RGBA": (255, 0, 0, 255),
    # Kept as CMYK rather than converted to RGB: its CMYK ICC profile stays valid and the colours
    # make no round trip.
    "CMYK": (0, 255, 255, 0),
}

# ICC header bytes 16-20 name the profile's colour space; a profile is only kept when it describes
# the pixels written (a GRAY profile on an image we turned RGB would be wrong).
_ICC_SPACE = {"RGB": b"RGB ", "RGBA": b"RGB ", "CMYK": b"CMYK"}

# ImageOps.exif_transpose decides per image from that image's own metadata; an animation needs one
# decision applied to every frame, so the orientation is read once and mapped here.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_MIN_FONT_SIZE = 12
_FONT_SIZE_DIVISOR = 20  # font size = shorter side / 20: readable, yet a small part of a photo
_MARGIN_DIVISOR = 40

# Encoder settings, chosen for a CPU-bound worker. JPEG: quality 90. WebP: quality 90 and method 2,
# about twice as fast as the default 4 for a few percent more bytes. PNG: zlib level 6 (Pillow's
# default) and no `optimize`, which retries compression for little gain.
_ENCODER_OPTIONS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 90},
    "WEBP": {"quality": 90, "method": 2},
}

# Below this font size the strokes are about a pixel wide, and halving the colour resolution (JPEG
# 4:2:0, lossy WebP) turns the red into a muddy purple. Such stamps are on small pictures, where the
# sharper encodings (JPEG 4:4:4, lossless WebP) cost little; big pictures keep the faster, smaller ones.
_SMALL_TEXT = 24


def watermark(src: Path, dst: Path, *, text: str, max_pixels: int, max_frames: int) -> ProcessedImage:
    """Write `src` with `text` stamped in red near its top-left corner to exactly `dst`.

    The output has the input's format (an MPO, a JPEG with extra pictures, is written as a plain
    JPEG of its first picture), its EXIF orientation applied and every animation frame stamped.
    `dst` needs no extension. If writing fails, a partly written `dst` may remain; the caller owns it.
    """
    with open_image(src, max_pixels) as image:
        is_mpo = image.format == "MPO"
        output_format = "JPEG" if is_mpo else str(image.format)
        with _decoding():
            frame_count = 1 if is_mpo else getattr(image, "n_frames", 1)
        screen = image.size
        check_animation(frame_count, *screen, max_frames=max_frames, max_pixels=max_pixels)

        frames: list[Image.Image] = []
        durations: list[float] = []
        animation: dict[str, Any] = {}
        transpose: Image.Transpose | None = None
        icc_profile: bytes | None = None
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None = None
        font_size = margin = 0
        for index in range(frame_count):
            with _decoding():
                if frame_count > 1:
                    image.seek(index)
                image.load()
            if index == 0:
                # Read after the first load: a PNG's eXIf chunk may follow the pixel data.
                transpose = _orientation_transpose(image)
                animation = _animation_options(image, output_format)
                icc_profile = image.info.get("icc_profile")
            durations.append(image.info.get("duration", 0))
            # An animation's frames must be copies (the next seek reuses the image); a still image
            # is drawn on in place when its mode allows.
            frame = _drawable(image, copy=frame_count > 1)
            if frame.size != screen:
                # A GIF frame placed beyond the logical screen makes Pillow grow the canvas;
                # browsers clip to the screen, and the encoders need frames of one size.
                frame = frame.crop((0, 0, *screen))
            if transpose is not None:
                frame = frame.transpose(transpose)
            if font is None:
                font, font_size, margin = _fit_font(text, frame.width, frame.height)
            ImageDraw.Draw(frame).text((margin, margin), text, fill=_RED[frame.mode], font=font)
            # Some encoders fall back on `info`: the input's comment, or an APNG's disposal and
            # blend, which describe its partial frames, not the full frames written here.
            frame.info = {}
            frames.append(frame)

    options: dict[str, Any] = {"format": output_format, **_ENCODER_OPTIONS.get(output_format, {})}
    small_text = font_size < _SMALL_TEXT
    if output_format == "JPEG" and frames[0].mode == "RGB":
        # Never for CMYK: libjpeg would subsample three channels against cyan, blurring black.
        options["subsampling"] = "4:4:4" if small_text else "4:2:0"
    if output_format == "WEBP" and small_text:
        options["lossless"] = True
    if icc_profile and icc_profile[16:20] == _ICC_SPACE[frames[0].mode]:
        options["icc_profile"] = icc_profile
    if len(frames) > 1:
        if animation.get("default_image"):
            durations = durations[1:]  # an APNG's default image is not an animation frame
        options.update(animation, save_all=True, append_images=frames[1:], duration=durations)
        if output_format == "GIF" and any(_has_transparent_pixels(frame) for frame in frames):
            # Restore-to-background before each frame: otherwise a pixel that turns transparent
            # keeps showing the previous frame through it.
            options["disposal"] = 2
    frames[0].save(dst, **options)

    return ProcessedImage(
        format=output_format,
        width=frames[0].width,
        height=frames[0].height,
        frames=len(frames),
        size_bytes=dst.stat().st_size,
    )


@contextmanager
def _decoding() -> Iterator[None]:
    """Turn a decoder's complaint about the input into `ImageRejected`."""
    try:
        yield
    except ImageRejected:
        raise
    except OSError as exc:
        # Pillow reports bad data as an OSError without errno ("image file is truncated", "broken
        # data stream"); one with an errno is the disk or file system failing, so it stays an OSError.
        if exc.errno is not None:
            raise
        raise ImageRejected(DAMAGED_MESSAGE) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own size guard (made an error by configure_pillow) firing after open_image's
        # check passed: only a GIF frame far beyond the logical screen, growing the canvas, does that.
        raise ImageRejected(OUTSIDE_MESSAGE) from exc
    except (SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as exc:
        # SyntaxError: broken PNG chunks; ValueError: oversized compressed text chunks; the rest
        # escape from plugins parsing malformed headers.
        raise ImageRejected(DAMAGED_MESSAGE) from exc


def _orientation_transpose(image: Image.Image) -> Image.Transpose | None:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except (SyntaxError, ValueError, struct.error, OSError):
        # A broken EXIF block spoils only the orientation, not the picture.
        return None
    return _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


def _animation_options(image: Image.Image, output_format: str) -> dict[str, Any]:
    """Loop count and background of the first frame, before later frames overwrite `image.info`."""
    options: dict[str, Any] = {}
    # A GIF without a loop count plays once; inventing one would change how it plays.
    if "loop" in image.info:
        options["loop"] = image.info["loop"]
    # A GIF's background is a palette index into a palette the output will not have.
    if output_format == "WEBP" and "background" in image.info:
        options["background"] = image.info["background"]
    if output_format == "PNG" and image.info.get("default_image"):
        # The APNG's first picture is a still shown by viewers without animation support.
        options["default_image"] = True
    return options


def _drawable(image: Image.Image, *, copy: bool) -> Image.Image:
    """`image` in a mode red can be drawn in: RGB, RGBA (keeping any transparency) or CMYK."""
    if image.mode.startswith("I"):
        # 16-bit greyscale: Pillow's own conversion clips 0-65535 to 0-255 (mid-grey turns white),
        # so scale to 8 bits first.
        image = image.point(lambda value: value / 256).convert("L")
        # A tRNS grey value is in 16-bit units and would now match the wrong pixels.
        image.info.pop("transparency", None)
    if image.mode == "CMYK":
        mode = "CMYK"
    elif image.has_transparency_data:
        mode = "RGBA"
    else:
        mode = "RGB"
    if image.mode != mode:
        return image.convert(mode)
    return image.copy() if copy else image


def _fit_font(
    text: str, width: int, height: int
) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int, int]:
    """Font, its size and the margin: scaled to the picture, shrunk (not below the minimum) to fit.

    Made per call rather than cached: a FreeType face must not be shared between threads, and
    loading Pillow's bundled font takes well under a millisecond.
    """
    shorter = min(width, height)
    margin = max(1, shorter // _MARGIN_DIVISOR)
    size = max(_MIN_FONT_SIZE, shorter // _FONT_SIZE_DIVISOR)
    font = ImageFont.load_default(size=size)
    longest = max((font.getlength(line) for line in text.splitlines()), default=0.0)
    room = width - 2 * margin
    if longest > room and size > _MIN_FONT_SIZE:
        size = max(_MIN_FONT_SIZE, int(size * room / longest))
        font = ImageFont.load_default(size=size)
    return font, size, margin


def _has_transparent_pixels(frame: Image.Image) -> bool:
    return frame.mode == "RGBA" and frame.getextrema()[3][0] < 255
