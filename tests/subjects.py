"""Pictures with something in them for the gravity, trim and overlay tests (tests/worker and
tests/api alike), made with Pillow in the test."""

from __future__ import annotations

import random

from PIL import ExifTags, Image, ImageDraw, ImageFilter

from tests.images import encode

SKIN = (224, 172, 140)
MARK = (230, 20, 20)
SUBJECT_BOX = (1150, 180, 1390, 460)


def off_centre_subject(size: tuple[int, int] = (1500, 600)) -> Image.Image:
    """A plain blue-grey backdrop with a face-like subject (skin tone, dark detail) in its right
    fifth, at SUBJECT_BOX: a centred square crop would miss it whole."""
    rng = random.Random(15)
    image = Image.new("RGB", size, (120, 140, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse(SUBJECT_BOX, fill=SKIN)
    left, top, right, bottom = SUBJECT_BOX
    for _ in range(30):
        x, y = rng.randint(left + 20, right - 40), rng.randint(top + 20, bottom - 30)
        draw.line((x, y, x + 15, y + 8), fill=(90, 50, 40), width=3)
    return image.filter(ImageFilter.GaussianBlur(1))


def sideways_with_marks(displayed: tuple[int, int], marks: dict[str, tuple[int, int]]) -> bytes:
    """A JPEG stored turned a quarter (EXIF orientation 6, as phones store portrait photos) whose
    picture as displayed is `displayed` (width, height): grey with a red 40 × 40 square centred on
    each of `marks` (displayed coordinates)."""
    upright = Image.new("RGB", displayed, (128, 128, 128))
    for x, y in marks.values():
        upright.paste(MARK, (x - 20, y - 20, x + 20, y + 20))
    # Orientation 6 means "turn 90° clockwise to display": store it turned counter-clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return encode(stored, "JPEG", quality=92, exif=exif)


def framed(
    size: tuple[int, int], inner: tuple[int, int, int, int], border: tuple[int, int, int]
) -> Image.Image:
    """`border` colour all round a black `inner` box (left, top, right, bottom)."""
    image = Image.new("RGB", size, border)
    image.paste((0, 0, 0), inner)
    return image


def logo(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """An opaque red RGBA rectangle: where it lands and how strongly is plain to see."""
    return Image.new("RGBA", size, (*MARK, 255))
