"""Which image formats imagequeue accepts, and how a file is identified from its bytes.

Both the API (to refuse a bad upload before it is queued) and the worker (to decode it) open
images through `open_image`, so the same formats and the same pixel limit apply everywhere.
Opening reads the header only; pixels are decoded later, by whoever calls `load()`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from PIL import Image

from core.image_structure import (
    GIF_SIGNATURES,
    JPEG_SIGNATURE,
    MAX_PROBE_READS,
    PNG_SIGNATURE,
    PROBE_BYTES_SLACK,
    BoundedReader,
    StructureTooCostly,
    check_jpeg_scans,
    check_png_chunks,
    count_gif_frames,
)

# Raster formats whose Pillow decoders are mature and commonly uploaded. Anything else (SVG, PDF,
# EPS, TIFF, PSD, ICO, ...) is refused: fewer decoders exposed to untrusted bytes.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP")

# Inputs are ALLOWED_FORMATS; outputs may also be AVIF (written, never decoded from a client).
CONTENT_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "AVIF": "image/avif",
}

EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "AVIF": ".avif",
}


class ImageRejected(ValueError):
    """The file can never be processed; the message is meant for the person who sent it."""


class UnsupportedImage(ImageRejected):
    pass


class TooManyPixels(ImageRejected):
    pass


class AnimationTooLarge(ImageRejected):
    pass


class TooCostlyToIdentify(ImageRejected):
    """Too many parts (chunks, blocks, reads) or metadata too large: see core.image_structure."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    frames: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


UNSUPPORTED_MESSAGE = "Unsupported file type: upload a JPEG, PNG, GIF, WebP or BMP image."
DAMAGED_MESSAGE = "The image data is damaged or incomplete and cannot be decoded."


def too_many_pixels_message(pixels: int, limit: int) -> str:
    return f"Image has {pixels:,} pixels; the limit is {limit:,} pixels."


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb guard use our limit and fail instead of warn.

    Called once at process start (API lifespan, worker main): Pillow keeps this as global state.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


def open_image(path: Path | BinaryIO, max_pixels: int) -> Image.Image:
    """Open `path` (or an open file) lazily, refusing formats outside ALLOWED_FORMATS and images
    over `max_pixels`.

    The pixel check happens here, on the header's declared size, before any pixel is decoded: a
    tiny file that claims 30000×30000 pixels never reaches a decoder.
    """
    try:
        image = Image.open(path, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _PILLOW_PIXELS.search(str(exc))
        pixels = int(found.group(1)) if found else max_pixels + 1
        raise TooManyPixels(too_many_pixels_message(pixels, max_pixels)) from None
    except OSError as exc:
        if exc.errno is not None:  # the file system failed (missing, unreadable): not the image's fault
            raise
        raise UnsupportedImage(UNSUPPORTED_MESSAGE) from None
    except (SyntaxError, ValueError):
        raise UnsupportedImage(UNSUPPORTED_MESSAGE) from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise UnsupportedImage("The image has no pixels.")
    if width * height > max_pixels:
        image.close()
        raise TooManyPixels(too_many_pixels_message(width * height, max_pixels))
    return image


def too_many_frames_message(frames: int, limit: int) -> str:
    return f"Animation has {frames:,} frames; the limit is {limit:,}."


def more_frames_than_message(limit: int) -> str:
    """The probe stops counting one frame past the limit, so it cannot say how many there are."""
    return f"Animation has more than {limit:,} frames; the limit is {limit:,}."


def animation_too_large_message(frames: int, width: int, height: int, limit: int) -> str:
    return (
        f"Animation has {frames:,} frames of {width:,}×{height:,} pixels "
        f"({frames * width * height:,} pixels in all); the limit is {limit:,} pixels."
    )


def check_animation(frames: int, width: int, height: int, *, max_frames: int, max_pixels: int) -> None:
    """Refuse animations with too many frames, or too many pixels over all frames together
    (open_image checked one frame; every frame is decoded and kept until the encoder runs)."""
    if frames <= 1:
        return
    if frames > max_frames:
        raise AnimationTooLarge(too_many_frames_message(frames, max_frames))
    if frames * width * height > max_pixels:
        raise AnimationTooLarge(animation_too_large_message(frames, width, height, max_pixels))


def probe_image(path: Path, *, max_pixels: int, max_frames: int) -> ImageInfo:
    """Identify the image at `path` from its bytes and check its limits; no pixel is decoded.

    The work is bounded whatever the bytes: PNG chunks and GIF blocks are walked first within
    limits, frames are counted no further than one past `max_frames`, and Pillow reads the header
    through a reader that refuses past MAX_PROBE_READS reads (core.image_structure). A progressive
    JPEG's scans are counted, since each one costs the decoder a pass over the whole picture.
    """
    with open(path, "rb") as file:
        try:
            return _probe(file, max_pixels=max_pixels, max_frames=max_frames)
        except StructureTooCostly as exc:
            raise TooCostlyToIdentify(str(exc)) from None


def _probe(file: BinaryIO, *, max_pixels: int, max_frames: int) -> ImageInfo:
    signature = file.read(len(PNG_SIGNATURE))
    gif_frames = None
    if signature == PNG_SIGNATURE:
        check_png_chunks(file)
    elif signature[:6] in GIF_SIGNATURES:
        # Pillow's n_frames would walk every frame; this stops one past the limit.
        gif_frames = count_gif_frames(file, stop_after=max_frames + 1)
    elif signature.startswith(JPEG_SIGNATURE):
        check_jpeg_scans(file)
    file.seek(0)
    max_bytes = 2 * os.fstat(file.fileno()).st_size + PROBE_BYTES_SLACK
    reader = BoundedReader(file, max_reads=MAX_PROBE_READS, max_bytes=max_bytes)
    with open_image(cast("BinaryIO", reader), max_pixels) as image:  # Pillow needs only read/seek/tell
        # Phones and cameras write multi-picture JPEGs (MPO); they are JPEGs, processed as one picture.
        if image.format == "MPO":
            return ImageInfo(format="JPEG", width=image.width, height=image.height, frames=1)
        if image.format == "GIF" and gif_frames is not None:
            frames = gif_frames
        else:
            try:  # declared in the header for PNG (APNG) and WebP: no walk
                frames = getattr(image, "n_frames", 1)
            except (OSError, SyntaxError, ValueError, EOFError):
                raise UnsupportedImage(DAMAGED_MESSAGE) from None
        if frames > max_frames:
            raise AnimationTooLarge(more_frames_than_message(max_frames))
        check_animation(frames, image.width, image.height, max_frames=max_frames, max_pixels=max_pixels)
        return ImageInfo(format=image.format or "", width=image.width, height=image.height, frames=frames)
