"""Photo-like test JPEGs: smooth colour fields, gradients and grain, so sizes are those of photos.

A flat or purely smooth picture compresses to a few kilobytes and would flatter every figure; film
grain (Gaussian noise) over soft colour blobs gives the 0.27 MP picture about 40 KB and the 12 MP one
about 3 MB at quality 90, as a phone photo of that size would be.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops

# Grain (standard deviation of the noise) that gives photo-like sizes at each scale.
SMALL_GRAIN = 2.0
LARGE_GRAIN = 4.5


def photo(width: int, height: int, *, grain: float) -> Image.Image:
    blobs = Image.effect_noise((max(8, width // 32), max(6, height // 32)), 64).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    across = Image.linear_gradient("L").resize((width, height))
    down = across.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    noise = Image.effect_noise((width, height), grain)
    red = ImageChops.add(ImageChops.blend(blobs, across, 0.5), noise, offset=-128)
    green = ImageChops.add(ImageChops.blend(blobs, down, 0.6), noise, offset=-118)
    mirrored = blobs.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    blue = ImageChops.add(ImageChops.blend(across, mirrored, 0.4), noise, offset=-138)
    return Image.merge("RGB", (red, green, blue))


def photo_jpeg(width: int, height: int) -> bytes:
    grain = SMALL_GRAIN if width * height < 1_000_000 else LARGE_GRAIN
    buffer = io.BytesIO()
    photo(width, height, grain=grain).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
