"""The operator's watermark images (WATERMARK_IMAGES), for the `overlay` op: loaded once per process,
bounded in size, and checked at start-up so that a missing or broken file stops the worker rather
than failing every task that names it."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageOps

from config import ConfigError
from core.formats import ImageRejected, open_image
from worker.heif import enable_heif

# A watermark is a logo or a seal: 2000 × 2000 is plenty, and each process keeps every one it has
# used decoded (RGBA: 16 MB at this bound).
MAX_WATERMARK_PIXELS = 4_000_000
UNUSABLE = "invalid setting: WATERMARK_IMAGES: {name!r} ({path}): {reason}"


def check_watermark_images(images: Mapping[str, Path]) -> None:
    """Load every configured image now; ConfigError naming the first one that cannot be used."""
    for name, path in images.items():
        try:
            load_watermark(path)
        except OSError as exc:
            raise ConfigError(UNUSABLE.format(name=name, path=path, reason=exc.strerror or exc)) from None
        except ImageRejected as exc:
            raise ConfigError(UNUSABLE.format(name=name, path=path, reason=exc)) from None


@functools.lru_cache(maxsize=32)
def load_watermark(path: Path) -> Image.Image:
    """The image at `path`, upright, as RGBA; refused past MAX_WATERMARK_PIXELS before decoding. The
    returned image is shared: only ever read from it."""
    enable_heif()  # a HEIC logo is read at start-up, before any render has registered HEIF
    with open_image(path, MAX_WATERMARK_PIXELS) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise ImageRejected(f"cannot be decoded ({exc})") from None
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGBA")
