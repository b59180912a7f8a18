"""The operations a task can ask for, as pydantic models: their parameters, bounds and checks, and
how a bad list is reported (ProcessingInvalid, naming the field and what is allowed)."""

from __future__ import annotations

import re
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

_ASPECT = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")


class ProcessingInvalid(ValueError):
    """The requested processing cannot be run; the message names the field and what is allowed."""


class Op(BaseModel):
    """What every operation model is: immutable, and strict about unknown parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Resize(Op):
    """`fit`: inside width × height, keeping the aspect ratio; `fill`: cover the box, then crop its
    centre to exactly width × height; `exact`: width × height, stretched. `fit` never enlarges
    unless `enlarge` is true."""

    op: Literal["resize"]
    width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    mode: Literal["fit", "fill", "exact"] = "fit"
    enlarge: bool = False

    @model_validator(mode="after")
    def _sides(self) -> Resize:
        if self.width is None and self.height is None:
            raise ValueError("resize needs `width`, `height` or both")
        if self.mode != "fit" and (self.width is None or self.height is None):
            raise ValueError(f"resize mode {self.mode!r} needs both `width` and `height`")
        return self


class Crop(Op):
    """A box (`left`, `top`, `width`, `height`, in pixels of the image at that step) or a centred
    crop to an aspect ratio (`aspect`, such as "16:9" or "1:1")."""

    op: Literal["crop"]
    left: int | None = Field(default=None, ge=0, le=MAX_SIDE)
    top: int | None = Field(default=None, ge=0, le=MAX_SIDE)
    width: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=1, le=MAX_SIDE)
    aspect: str | None = Field(default=None, description='"W:H", such as "16:9"')

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


class Format(Op):
    """The output's encoding; must be the last operation. `quality` (1-100) for the lossy ones."""

    op: Literal["format"]
    format: Literal[OUTPUT_FORMATS]  # type: ignore[valid-type]
    quality: int | None = Field(default=None, ge=1, le=100)


Operation = Annotated[
    Resize | Crop | Rotate | Flip | Grayscale | Blur | Sharpen | Watermark | Format,
    Field(discriminator="op"),
]
OPERATION_NAMES = ("resize", "crop", "rotate", "flip", "grayscale", "blur", "sharpen", "watermark", "format")
OPS = TypeAdapter(list[Operation])


def check_ops(ops: list[Any], field: str) -> None:
    """What the models cannot see one at a time: `format` comes last."""
    for index, op in enumerate(ops):
        if isinstance(op, Format) and index != len(ops) - 1:
            raise ProcessingInvalid(f"`{field}[{index}]`: `format` must be the last operation.")


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
