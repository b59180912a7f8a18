"""The operations a task can ask for, as pydantic models: their parameters, bounds and checks, and
how a bad list is reported (ProcessingInvalid, naming the field and what is allowed)."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any, Literal

from PIL import ImageColor, features
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

# Hard bounds that hold whatever the settings say; MAX_OUTPUT_PIXELS bounds each output's area.
MAX_SIDE = 16_384
MAX_OPS = 20
MAX_TEXT_CHARS = 200

POSITIONS = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)
OUTPUT_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", *(("avif",) if features.check("avif") else ()))
# Where `resize` mode "fill" and `crop` "aspect" keep their part of the picture: one of the nine
# positions (the eight compass points and the centre), "smart" (the most salient region, found by the
# worker), or "focus" (the point the upload's `focus` field gave).
GRAVITIES = (*POSITIONS, "smart", "focus")
# The formats `max_bytes` can search a quality for; PNG is lossless and has none.
LOSSY_FORMATS = tuple(name for name in OUTPUT_FORMATS if name != "png")
# `max_bytes`: the lowest quality the search tries, and how many encodes it may make at most (the first
# at the starting quality, then a binary search of the rest: 1 + ceil(log2(100)) = 8).
MAX_BYTES_FLOOR_QUALITY = 10
MAX_BYTES_ENCODES = 8

_ASPECT = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")


class ProcessingInvalid(ValueError):
    """The requested processing cannot be run; the message names the field and what is allowed."""


class Op(BaseModel):
    """What every operation model is: immutable, and strict about unknown parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _colour(value: str | None) -> str | None:
    if value is not None:
        try:
            ImageColor.getrgb(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a colour: use a CSS name, #rrggbb or #rrggbbaa") from None
    return value


def colour_rgba(value: str) -> tuple[int, int, int, int]:
    red, green, blue, *alpha = ImageColor.getrgb(value)
    return red, green, blue, alpha[0] if alpha else 255


class Resize(Op):
    """`fit`: inside width × height, keeping the aspect ratio; `fill`: cover the box, then crop to
    exactly width × height where `gravity` says (the centre by default); `exact`: width × height,
    stretched; `pad`: fit inside the box, then extend to exactly width × height with `background`
    (white, or transparent where the output format has alpha). `fit` and `pad` never enlarge unless
    `enlarge` is true."""

    op: Literal["resize"]
    width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    mode: Literal["fit", "fill", "exact", "pad"] = "fit"
    enlarge: bool = False
    # None is the centre: left out of the stored form, so rows written before gravity read the same.
    gravity: Literal[GRAVITIES] | None = None  # type: ignore[valid-type]
    background: str | None = Field(default=None, max_length=32, description="A CSS colour, for `pad`.")

    @field_validator("background")
    @classmethod
    def _background(cls, value: str | None) -> str | None:
        return _colour(value)

    @model_validator(mode="after")
    def _sides(self) -> Resize:
        if self.width is None and self.height is None:
            raise ValueError("resize needs `width`, `height` or both")
        if self.mode != "fit" and (self.width is None or self.height is None):
            raise ValueError(f"resize mode {self.mode!r} needs both `width` and `height`")
        if self.gravity is not None and self.mode != "fill":
            raise ValueError('resize `gravity` applies to mode "fill" only')
        if self.background is not None and self.mode != "pad":
            raise ValueError('resize `background` applies to mode "pad" only')
        return self


class Crop(Op):
    """A box (`left`, `top`, `width`, `height`, in pixels of the image at that step) or the largest
    crop to an aspect ratio (`aspect`, such as "16:9" or "1:1"), placed by `gravity` (the centre by
    default)."""

    op: Literal["crop"]
    left: int | None = Field(default=None, ge=0, le=MAX_SIDE)
    top: int | None = Field(default=None, ge=0, le=MAX_SIDE)
    width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    aspect: str | None = Field(default=None, description='"W:H", such as "16:9"')
    gravity: Literal[GRAVITIES] | None = None  # type: ignore[valid-type]

    @field_validator("aspect")
    @classmethod
    def _aspect(cls, value: str | None) -> str | None:
        if value is not None and not _ASPECT.fullmatch(value):
            raise ValueError('aspect must look like "16:9" (two whole numbers from 1 to 9999)')
        return value

    @model_validator(mode="after")
    def _one_form(self) -> Crop:
        box = (self.left, self.top, self.width, self.height)
        if self.aspect is not None:
            if any(value is not None for value in box):
                raise ValueError("crop takes either `aspect` or a box (`left`, `top`, `width`, `height`)")
        elif any(value is None for value in box):
            raise ValueError("crop needs `left`, `top`, `width` and `height`, or `aspect`")
        if self.gravity is not None and self.aspect is None:
            raise ValueError("crop `gravity` applies to `aspect` only")
        return self

    def aspect_ratio(self) -> tuple[int, int] | None:
        match = _ASPECT.fullmatch(self.aspect or "")
        return (int(match[1]), int(match[2])) if match else None


class Rotate(Op):
    """Counter-clockwise, in degrees; the canvas grows to hold the whole picture. Multiples of 90
    are exact; other angles fill the new corners with white (transparent where there is alpha)."""

    op: Literal["rotate"]
    degrees: float = Field(ge=-360, le=360)


class Flip(Op):
    op: Literal["flip"]
    direction: Literal["horizontal", "vertical"]


class Grayscale(Op):
    op: Literal["grayscale"]


class Blur(Op):
    """Gaussian blur; the radius is in pixels of the image at that step."""

    op: Literal["blur"]
    radius: float = Field(default=2.0, gt=0, le=100)


class Sharpen(Op):
    """Unsharp mask."""

    op: Literal["sharpen"]
    radius: float = Field(default=2.0, gt=0, le=50)
    percent: int = Field(default=150, ge=1, le=500)
    threshold: int = Field(default=3, ge=0, le=255)


class Watermark(Op):
    """Text stamped on the picture. Without `text`, the WATERMARK_TEXT setting (chosen at upload);
    without `size`, a size in proportion to the picture, shrunk to fit its width."""

    op: Literal["watermark"]
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    position: Literal[POSITIONS] = "top-left"  # type: ignore[valid-type]
    size: int | None = Field(default=None, ge=6, le=1000, description="Font size in pixels.")
    color: str = Field(default="red", max_length=32, description='A CSS colour: "red", "#ff0000".')
    opacity: float = Field(default=1.0, ge=0, le=1)

    @field_validator("color")
    @classmethod
    def _color(cls, value: str) -> str:
        try:
            ImageColor.getrgb(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a colour: use a CSS name or #rrggbb") from None
        return value

    def rgba(self) -> tuple[int, int, int, int]:
        red, green, blue, *alpha = ImageColor.getrgb(self.color)
        return red, green, blue, round((alpha[0] if alpha else 255) * self.opacity)


class Trim(Op):
    """Cut away a uniform border: the colour of the top-left pixel, give or take `threshold` in every
    channel. A picture that is all border is left as it is."""

    op: Literal["trim"]
    threshold: int = Field(default=10, ge=0, le=255)


class Pad(Op):
    """`margin` pixels added on every side, in `background` (white, or transparent where the output
    format has alpha)."""

    op: Literal["pad"]
    margin: int = Field(ge=0, le=MAX_SIDE)
    background: str | None = Field(default=None, max_length=32, description="A CSS colour.")

    @field_validator("background")
    @classmethod
    def _background(cls, value: str | None) -> str | None:
        return _colour(value)


class Overlay(Op):
    """One of the operator's watermark images (WATERMARK_IMAGES) by name: at `position`, `margin`
    pixels from the edges (without it, a fortieth of the shorter side), `scale` times the picture's
    width wide (without it, its own size, shrunk to fit); or, with `tile`, repeated over the whole
    picture `margin` pixels apart."""

    op: Literal["overlay"]
    image: str = Field(min_length=1, max_length=32, description="A name from WATERMARK_IMAGES.")
    position: Literal[POSITIONS] = "bottom-right"  # type: ignore[valid-type]
    scale: float | None = Field(default=None, ge=0.01, le=1)
    opacity: float = Field(default=1.0, ge=0, le=1)
    margin: int | None = Field(default=None, ge=0, le=MAX_SIDE)
    tile: bool = False


class Format(Op):
    """The output's encoding; must be the last operation. `quality` (1-100) for the lossy ones.
    `max_bytes`: the highest quality (from `quality` or the format's default down to
    MAX_BYTES_FLOOR_QUALITY) whose file is at most that size."""

    op: Literal["format"]
    format: Literal[OUTPUT_FORMATS]  # type: ignore[valid-type]
    quality: int | None = Field(default=None, ge=1, le=100)
    max_bytes: int | None = Field(default=None, ge=100, le=1024**3)

    @model_validator(mode="after")
    def _lossy(self) -> Format:
        if self.max_bytes is not None and self.format not in LOSSY_FORMATS:
            raise ValueError(f"`max_bytes` needs a lossy format: {', '.join(LOSSY_FORMATS)}")
        return self


Operation = Annotated[
    Resize | Crop | Rotate | Flip | Grayscale | Blur | Sharpen | Watermark | Trim | Pad | Overlay | Format,
    Field(discriminator="op"),
]
OPERATION_NAMES = (
    "resize",
    "crop",
    "rotate",
    "flip",
    "grayscale",
    "blur",
    "sharpen",
    "watermark",
    "trim",
    "pad",
    "overlay",
    "format",
)
OPS = TypeAdapter(list[Operation])


def check_ops(ops: list[Any], field: str) -> None:
    """What the models cannot see one at a time: `format` comes last."""
    for index, op in enumerate(ops):
        if isinstance(op, Format) and index != len(ops) - 1:
            raise ProcessingInvalid(f"`{field}[{index}]`: `format` must be the last operation.")


FOCUS_MISSING = (
    '`{field}[{index}]`: gravity "focus" needs the `focus` form field (x,y fractions, such as 0.3,0.6).'
)
UNKNOWN_WATERMARK_IMAGE = "`{field}[{index}].image`: unknown watermark image {name!r}; {known}."


def check_references(
    ops: tuple[Op, ...], field: str, watermark_images: Collection[str], *, focus: bool
) -> None:
    """What ops name outside themselves: a watermark image that must be configured, a focus point that
    the upload must give. ProcessingInvalid names the op."""
    for index, op in enumerate(ops):
        if isinstance(op, Overlay) and op.image not in watermark_images:
            known = (
                f"configured: {', '.join(sorted(watermark_images))}"
                if watermark_images
                else "none are configured (WATERMARK_IMAGES)"
            )
            raise ProcessingInvalid(
                UNKNOWN_WATERMARK_IMAGE.format(field=field, index=index, name=op.image[:40], known=known)
            )
        if isinstance(op, Resize | Crop) and op.gravity == "focus" and not focus:
            raise ProcessingInvalid(FOCUS_MISSING.format(field=field, index=index))


def first_error(exc: ValidationError) -> str:
    """pydantic's first complaint, with its place (`[1].width`) and, for an unknown op, the choices."""
    error = exc.errors()[0]
    # A discriminated union puts the op's name after its index: ([1], "resize", "width") in `ops`,
    # ("ops", 1, "resize", "width") in a preset.
    loc = error["loc"]
    location = [
        part
        for index, part in enumerate(loc)
        if not (index and isinstance(loc[index - 1], int) and part in OPERATION_NAMES)
    ]
    place = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"{place}: unknown op; allowed: {', '.join(OPERATION_NAMES)}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "literal_error":
        message = f"must be one of {error['ctx']['expected']}"
    return f"{place}: {message}"
