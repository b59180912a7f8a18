"""Which image formats imagequeue accepts, and how a file is identified from its bytes.

Both the API (to refuse a bad upload before it is queued) and the worker (to decode it) open
images through `open_image`, so the same formats and the same pixel limit apply everywhere.
Opening reads the header only; pixels are decoded later, by whoever calls `load()`.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from PIL import Image

from core.heif_structure import Damaged as HeifDamaged
from core.heif_structure import is_heif, read_heif
from core.image_structure import (
    GIF_SIGNATURES,
    JPEG_SIGNATURE,
    MAX_PROBE_READS,
    PNG_SIGNATURE,
    PROBE_BYTES_SLACK,
    BoundedReader,
    QuickProbeSpent,
    QuickReader,
    StructureTooCostly,
    check_jpeg_scans,
    check_png_chunks,
    count_gif_frames,
)
from core.tiff_structure import (
    BIGTIFF_SIGNATURES,
    TIFF_SIGNATURES,
    UnsupportedCompression,
    check_first_page,
    count_tiff_pages,
)
from core.tiff_structure import Damaged as TiffDamaged

# Raster formats whose decoders are mature and commonly uploaded. Anything else (SVG, PDF, EPS,
# PSD, ICO, ...) is refused: fewer decoders exposed to untrusted bytes. HEIF is decoded by pi-heif
# (libheif), which only the worker has: the API identifies HEIF from its boxes alone (_probe).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "AVIF", "TIFF", "HEIF")

# Inputs the service does not write: an output with no `format` op becomes JPEG, or PNG when the
# picture has transparency (default_output_format).
READ_ONLY_FORMATS: tuple[str, ...] = ("TIFF", "HEIF")

# The colour models of a TIFF page worker.imaging can turn into one it works in (Pillow's modes).
TIFF_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "I", "I;16", "I;16B", "I;16L")

CONTENT_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "AVIF": "image/avif",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
}

EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "AVIF": ".avif",
    "TIFF": ".tif",
    "HEIF": ".heic",
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


UNSUPPORTED_MESSAGE = "Unsupported file type: upload a JPEG, PNG, GIF, WebP, BMP, AVIF, HEIC or TIFF image."
TIFF_MODE_UNSUPPORTED = "This TIFF's colour model ({mode}) is not supported: use RGB, greyscale or CMYK."
DAMAGED_MESSAGE = "The image data is damaged or incomplete and cannot be decoded."
BIGTIFF_UNSUPPORTED = "BigTIFF (a TIFF over 4 GB's format) is not supported: save it as a classic TIFF."


def default_output_format(input_format: str, *, has_alpha: bool) -> str:
    """The format an output is written in when no `format` op says: the input's own, unless the
    service does not write it (READ_ONLY_FORMATS)."""
    if input_format in READ_ONLY_FORMATS:
        return "PNG" if has_alpha else "JPEG"
    return input_format


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
    # HEIF only where its decoder was registered (the worker: worker.heif); the API never opens it.
    formats = [name for name in ALLOWED_FORMATS if name != "HEIF" or name in Image.OPEN]
    try:
        image = Image.open(path, formats=formats)
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
    except RuntimeError:  # libavif (Pillow's AVIF plugin) refusing the file it parsed
        raise UnsupportedImage(DAMAGED_MESSAGE) from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise UnsupportedImage("The image has no pixels.")
    if width * height > max_pixels:
        image.close()
        raise TooManyPixels(too_many_pixels_message(width * height, max_pixels))
    return image


def too_many_pages_message(limit: int) -> str:
    return f"TIFF has more than {limit:,} pages; the limit is {limit:,} (MAX_FRAMES)."


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


# Enough of a file's start for has_image_signature.
SIGNATURE_BYTES = 16


def has_image_signature(head: bytes) -> bool:
    """Whether a file starting with `head` (its first SIGNATURE_BYTES) may be an image we accept:
    a cheap first look before reading a whole file (a direct upload's object). True is no promise:
    probe_image decides, and also names the BigTIFF it refuses."""
    return (
        is_heif(head)
        or head[:4] in TIFF_SIGNATURES
        or head[:4] in BIGTIFF_SIGNATURES
        or head.startswith(PNG_SIGNATURE)
        or head[:6] in GIF_SIGNATURES
        or head.startswith(JPEG_SIGNATURE)
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head.startswith(b"BM")
    )


def probe_image(path: Path, *, max_pixels: int, max_frames: int, quick: bool = False) -> ImageInfo:
    """Identify the image at `path` from its bytes and check its limits; no pixel is decoded.

    The work is bounded whatever the bytes: PNG chunks and GIF blocks are walked first within
    limits, frames are counted no further than one past `max_frames`, and Pillow reads the header
    through a reader that refuses past MAX_PROBE_READS reads (core.image_structure). A progressive
    JPEG's scans are counted, since each one costs the decoder a pass over the whole picture.

    `quick`: give up (QuickProbeSpent) past QUICK_PROBE_READS reads and seeks in all, for a caller
    that can afford about a millisecond here and probes again with the full limits elsewhere.
    """
    with open(path, "rb") as raw:
        file = cast("BinaryIO", QuickReader(raw)) if quick else raw
        try:
            return _probe(file, max_pixels=max_pixels, max_frames=max_frames)
        except QuickProbeSpent:
            raise
        except StructureTooCostly as exc:
            raise TooCostlyToIdentify(str(exc)) from None


def _probe(file: BinaryIO, *, max_pixels: int, max_frames: int) -> ImageInfo:
    signature = file.read(12)
    gif_frames = None
    if is_heif(signature):
        heif = _probe_heif(file, max_pixels=max_pixels, max_frames=max_frames)
        if heif.format == "HEIF":
            return heif  # the API has no HEIF decoder: the boxes are all it checks
        # An AVIF's boxes passed: libavif (through Pillow) parses it too, below.
    elif signature[:4] in BIGTIFF_SIGNATURES:
        raise UnsupportedImage(BIGTIFF_UNSUPPORTED)
    elif signature[:4] in TIFF_SIGNATURES:
        # Pillow's n_frames would parse every page's directory; this stops one past the limit.
        # Its first page's codec and tiles are checked too: every libtiff codec and any tile size
        # would otherwise reach the decoder (core.tiff_structure).
        try:
            pages = count_tiff_pages(file, stop_after=max_frames + 1)
            check_first_page(file, max_pixels)
        except (TiffDamaged, struct.error):
            raise UnsupportedImage(DAMAGED_MESSAGE) from None
        except UnsupportedCompression as exc:
            raise UnsupportedImage(str(exc)) from None
        if pages > max_frames:
            raise AnimationTooLarge(too_many_pages_message(max_frames))
    elif signature[:8] == PNG_SIGNATURE:
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
        if image.format == "TIFF":
            # Only the first page is decoded: the others were counted against MAX_FRAMES above.
            if image.mode not in TIFF_MODES:
                raise UnsupportedImage(TIFF_MODE_UNSUPPORTED.format(mode=image.mode))
            return ImageInfo(format="TIFF", width=image.width, height=image.height, frames=1)
        if image.format == "GIF" and gif_frames is not None:
            frames = gif_frames
        else:
            try:  # declared in the header for PNG (APNG) and WebP: no walk
                frames = getattr(image, "n_frames", 1)
            except (OSError, SyntaxError, ValueError, EOFError, RuntimeError):
                raise UnsupportedImage(DAMAGED_MESSAGE) from None
        if frames > max_frames:
            raise AnimationTooLarge(more_frames_than_message(max_frames))
        check_animation(frames, image.width, image.height, max_frames=max_frames, max_pixels=max_pixels)
        return ImageInfo(format=image.format or "", width=image.width, height=image.height, frames=frames)


def _probe_heif(file: BinaryIO, *, max_pixels: int, max_frames: int) -> ImageInfo:
    """Check a HEIF or AVIF file's limits from its boxes (core.heif_structure): the displayed size,
    the pixels its tiles decode to (tiles overhang the picture's edges: up to twice the limit), its
    frames."""
    try:
        structure = read_heif(file, max_frames=max_frames)
    except (HeifDamaged, struct.error, IndexError):
        raise UnsupportedImage(DAMAGED_MESSAGE) from None
    width, height = structure.width, structure.height
    if width < 1 or height < 1:
        raise UnsupportedImage("The image has no pixels.")
    if width * height > max_pixels:
        raise TooManyPixels(too_many_pixels_message(width * height, max_pixels))
    if structure.decoded_pixels > 2 * max_pixels:
        raise TooManyPixels(too_many_pixels_message(structure.decoded_pixels, max_pixels))
    if structure.frames > max_frames:
        raise AnimationTooLarge(too_many_frames_message(structure.frames, max_frames))
    check_animation(structure.frames, width, height, max_frames=max_frames, max_pixels=max_pixels)
    return ImageInfo(format=structure.format, width=width, height=height, frames=structure.frames)
