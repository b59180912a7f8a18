"""What a task makes: operations, presets and outputs, validated once at upload and stored on the row.

A client chooses with three optional form fields of `POST /upload`:

- `preset`: a name (`default`, `thumbnail`, `web`, ...; operators add their own in PRESETS);
- `ops`: a JSON list of operations applied in order, each `{"op": NAME, ...params}`;
- `outputs`: a JSON object of output name -> preset name or ops list, for several derivatives of
  one upload (decoded once).

Whatever was chosen is resolved here into a `Processing`: a list of outputs, each an explicit ops
list. That resolved form is what the row stores and what the worker runs, so a preset edited later
does not change a task already queued, and the worker never needs the presets at all.

EXIF orientation is applied before any operation (it is not an operation). An output's encoding is
its last `format` operation, or the input's own format when it has none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
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

from config import ConfigError, Settings
from core.json_fields import JsonFieldInvalid, parse_json_field

# Hard bounds that hold whatever the settings say; MAX_OUTPUT_PIXELS bounds each output's area.
MAX_SIDE = 16_384
MAX_OPS = 20
MAX_OUTPUTS = 8
MAX_TEXT_CHARS = 200

DEFAULT_PRESET = "default"
# The output of an upload that asked for a preset or ops rather than named outputs.
SINGLE_OUTPUT = "image"

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

_OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_ASPECT = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")


class ProcessingInvalid(ValueError):
    """The requested processing cannot be run; the message names the field and what is allowed."""


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resize(_Op):
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


class Crop(_Op):
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


class Rotate(_Op):
    """Counter-clockwise, in degrees; the canvas grows to hold the whole picture. Multiples of 90
    are exact; other angles fill the new corners with white (transparent where there is alpha)."""

    op: Literal["rotate"]
    degrees: float = Field(ge=-360, le=360)


class Flip(_Op):
    op: Literal["flip"]
    direction: Literal["horizontal", "vertical"]


class Grayscale(_Op):
    op: Literal["grayscale"]


class Blur(_Op):
    """Gaussian blur; the radius is in pixels of the image at that step."""

    op: Literal["blur"]
    radius: float = Field(default=2.0, gt=0, le=100)


class Sharpen(_Op):
    """Unsharp mask."""

    op: Literal["sharpen"]
    radius: float = Field(default=2.0, gt=0, le=50)
    percent: int = Field(default=150, ge=1, le=500)
    threshold: int = Field(default=3, ge=0, le=255)


class Watermark(_Op):
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


class Format(_Op):
    """The output's encoding; must be the last operation. `quality` (1-100) for the lossy ones."""

    op: Literal["format"]
    format: Literal[OUTPUT_FORMATS]  # type: ignore[valid-type]
    quality: int | None = Field(default=None, ge=1, le=100)


Operation = Annotated[
    Resize | Crop | Rotate | Flip | Grayscale | Blur | Sharpen | Watermark | Format,
    Field(discriminator="op"),
]
OPERATION_NAMES = ("resize", "crop", "rotate", "flip", "grayscale", "blur", "sharpen", "watermark", "format")
_OPS = TypeAdapter(list[Operation])


@dataclass(frozen=True)
class Output:
    """One derivative: its name (the key of `outputs`), the preset it came from, and its ops."""

    name: str
    ops: tuple[_Op, ...]
    preset: str | None = None

    def format(self) -> Format | None:
        return self.ops[-1] if self.ops and isinstance(self.ops[-1], Format) else None


@dataclass(frozen=True)
class Processing:
    outputs: tuple[Output, ...]

    def label(self) -> str:
        """A short, bounded name for metrics: the preset, or `ops` / `outputs`."""
        if len(self.outputs) > 1:
            return "outputs"
        return self.outputs[0].preset or "ops"

    def to_json(self) -> dict[str, Any]:
        return {
            "outputs": [
                {
                    "name": output.name,
                    "preset": output.preset,
                    "ops": [op.model_dump(exclude_none=True) for op in output.ops],
                }
                for output in self.outputs
            ]
        }

    @classmethod
    def from_json(cls, stored: Mapping[str, Any] | None, *, default: Processing) -> Processing:
        """What a row stored; `default` for rows from before presets existed (column NULL)."""
        if stored is None:
            return default
        return cls(
            tuple(
                Output(
                    name=item["name"], preset=item.get("preset"), ops=tuple(_OPS.validate_python(item["ops"]))
                )
                for item in stored["outputs"]
            )
        )


class OutputRecord(BaseModel):
    """One output as the row stores it once the task is `done`."""

    name: str
    file: str = Field(description="Generated file name in PROCESSED_DIR.")
    format: str = Field(description="Pillow's name: JPEG, PNG, GIF, WEBP, BMP or AVIF.")
    width: int
    height: int
    frames: int
    size_bytes: int


@dataclass(frozen=True)
class Preset:
    description: str
    ops: tuple[_Op, ...]


def _ops(raw: list[dict[str, Any]]) -> tuple[_Op, ...]:
    return tuple(_OPS.validate_python(raw))


BUILTIN_PRESETS: dict[str, Preset] = {
    DEFAULT_PRESET: Preset(
        "The watermark text in red at the top left; same size and format.", _ops([{"op": "watermark"}])
    ),
    "thumbnail": Preset(
        "Fits in 256 × 256 (never enlarged); same format.",
        _ops([{"op": "resize", "width": 256, "height": 256, "mode": "fit"}]),
    ),
    "web": Preset(
        "Long side at most 1920, JPEG quality 85, metadata stripped.",
        _ops(
            [
                {"op": "resize", "width": 1920, "height": 1920, "mode": "fit"},
                {"op": "format", "format": "jpeg", "quality": 85},
            ]
        ),
    ),
    "avatar": Preset(
        "Centred square crop, 512 × 512; same format.",
        _ops(
            [{"op": "crop", "aspect": "1:1"}, {"op": "resize", "width": 512, "height": 512, "mode": "exact"}]
        ),
    ),
    "grayscale": Preset("Shades of grey; same size and format.", _ops([{"op": "grayscale"}])),
    "webp": Preset("Same size, WebP.", _ops([{"op": "format", "format": "webp"}])),
}


class _PresetSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(default="", max_length=200)
    ops: list[Operation] = Field(min_length=1, max_length=MAX_OPS)


def configured_presets(settings: Settings) -> dict[str, Preset]:
    """The presets of these settings; a bad PRESETS setting stops start-up (ConfigError)."""
    try:
        return build_presets(settings.presets)
    except ProcessingInvalid as exc:
        raise ConfigError(str(exc)) from None


def build_presets(configured: Mapping[str, Any]) -> dict[str, Preset]:
    """The built-in presets plus the PRESETS setting (which may replace a built-in one).

    Raises ProcessingInvalid naming the bad preset; start-up turns that into a refusal to start.
    """
    presets = dict(BUILTIN_PRESETS)
    for name, raw in configured.items():
        if not _OUTPUT_NAME.fullmatch(str(name)):
            raise ProcessingInvalid(
                f"PRESETS: {name!r} is not a usable preset name (letters, digits, - and _)"
            )
        try:
            parsed = _PresetSetting.model_validate(raw)
            _check_ops(parsed.ops, f"PRESETS.{name}.ops")
        except ValidationError as exc:
            raise ProcessingInvalid(f"PRESETS.{name}{_first_error(exc)}") from None
        presets[str(name)] = Preset(parsed.description or f"Operator preset {name}.", tuple(parsed.ops))
    return presets


def resolve(
    *,
    preset: str | None,
    ops: str | None,
    outputs: str | None,
    presets: Mapping[str, Preset],
    watermark_text: str,
) -> Processing:
    """The upload's form fields as a `Processing`; ProcessingInvalid names the field that is wrong."""
    chosen = [name for name, value in (("preset", preset), ("ops", ops), ("outputs", outputs)) if value]
    if len(chosen) > 1:
        raise ProcessingInvalid(
            f"Send only one of `preset`, `ops` and `outputs` (got {' and '.join(chosen)})."
        )
    if outputs:
        parsed = _json_field("outputs", outputs)
        if not isinstance(parsed, dict) or not parsed:
            raise ProcessingInvalid(
                "`outputs` must be a JSON object of output name -> preset name or ops list."
            )
        if len(parsed) > MAX_OUTPUTS:
            raise ProcessingInvalid(f"`outputs` may name at most {MAX_OUTPUTS} outputs.")
        resolved = []
        for name, spec in parsed.items():
            if not _OUTPUT_NAME.fullmatch(name):
                raise ProcessingInvalid(
                    f"`outputs`: {name[:40]!r} is not a usable output name (1-32 letters, digits, - and _)."
                )
            field = f"outputs.{name}"
            if isinstance(spec, str):
                resolved.append(_from_preset(spec, presets, field, name))
            else:
                resolved.append(Output(name=name, ops=_validated_ops(spec, field)))
        outputs_tuple = tuple(resolved)
    elif ops:
        outputs_tuple = (Output(name=SINGLE_OUTPUT, ops=_validated_ops(_json_field("ops", ops), "ops")),)
    else:
        outputs_tuple = (_from_preset(preset or DEFAULT_PRESET, presets, "preset", SINGLE_OUTPUT),)
    return Processing(tuple(_with_text(output, watermark_text) for output in outputs_tuple))


def default_processing(presets: Mapping[str, Preset], watermark_text: str) -> Processing:
    return resolve(preset=None, ops=None, outputs=None, presets=presets, watermark_text=watermark_text)


def _from_preset(name: str, presets: Mapping[str, Preset], field: str, output: str) -> Output:
    found = presets.get(name)
    if found is None:
        raise ProcessingInvalid(
            f"`{field}`: unknown preset {name[:40]!r}; choose one of {', '.join(presets)}."
        )
    return Output(name=output, ops=found.ops, preset=name)


def _with_text(output: Output, watermark_text: str) -> Output:
    """Fill in the watermark text now, so the task keeps the text of the day it was uploaded."""
    ops = tuple(
        op.model_copy(update={"text": watermark_text})
        if isinstance(op, Watermark) and op.text is None
        else op
        for op in output.ops
    )
    return Output(name=output.name, ops=ops, preset=output.preset)


def _json_field(field: str, raw: str) -> Any:
    try:
        return parse_json_field(field, raw)
    except JsonFieldInvalid as exc:
        raise ProcessingInvalid(str(exc)) from None


def _validated_ops(raw: Any, field: str) -> tuple[_Op, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProcessingInvalid(
            f'`{field}` must be a non-empty JSON list of operations such as {{"op": "resize"}}.'
        )
    if len(raw) > MAX_OPS:
        raise ProcessingInvalid(f"`{field}` may hold at most {MAX_OPS} operations.")
    try:
        parsed = _OPS.validate_python(raw)
    except ValidationError as exc:
        raise ProcessingInvalid(f"`{field}`: {_first_error(exc, raw)}") from None
    _check_ops(parsed, field)
    return tuple(parsed)


def _check_ops(ops: list[Any], field: str) -> None:
    for index, op in enumerate(ops):
        if isinstance(op, Format) and index != len(ops) - 1:
            raise ProcessingInvalid(f"`{field}[{index}]`: `format` must be the last operation.")


def _first_error(exc: ValidationError, raw: Any = None) -> str:
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


def output_size(ops: tuple[_Op, ...], width: int, height: int) -> tuple[int, int]:
    """The pixel size `ops` produce from a `width` × `height` picture (already oriented).

    Shared by the API (to refuse an output over MAX_OUTPUT_PIXELS before queueing) and the worker
    (which checks again once it knows the orientation). A crop box outside the picture is reported
    by the worker, which knows the exact size at that step; here it is taken at face value.
    """
    for op in ops:
        if isinstance(op, Resize):
            width, height = resized_size(op, width, height)
        elif isinstance(op, Crop):
            left, top, right, bottom = crop_box(op, width, height)
            width, height = right - left, bottom - top
        elif isinstance(op, Rotate):
            width, height = rotated_size(op.degrees, width, height)
    return width, height


def resized_size(op: Resize, width: int, height: int) -> tuple[int, int]:
    if op.mode in ("exact", "fill"):
        assert op.width is not None and op.height is not None
        return op.width, op.height
    scale = min(
        op.width / width if op.width else float("inf"),
        op.height / height if op.height else float("inf"),
    )
    if scale >= 1 and not op.enlarge:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def crop_box(op: Crop, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop on a `width` × `height` picture."""
    ratio = op.aspect_ratio()
    if ratio is None:
        assert op.left is not None and op.top is not None and op.width is not None and op.height is not None
        return op.left, op.top, op.left + op.width, op.top + op.height
    aspect_w, aspect_h = ratio
    if width * aspect_h > height * aspect_w:  # too wide: keep the full height
        new_w, new_h = max(1, round(height * aspect_w / aspect_h)), height
    else:
        new_w, new_h = width, max(1, round(width * aspect_h / aspect_w))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    return left, top, left + new_w, top + new_h


def rotated_size(degrees: float, width: int, height: int) -> tuple[int, int]:
    """The canvas `rotate(expand=True)` makes, to a pixel (quarter turns swap the sides exactly)."""
    turns = degrees % 360
    if turns in (90, 270):
        return height, width
    if turns in (0, 180):
        return width, height
    # Pillow's own arithmetic (Image.rotate): it rounds each rotated corner outwards, so its canvas
    # can be a pixel wider than ceil(w·cos + h·sin). Same angle as worker.operations.rotate passes.
    angle = -math.radians(turns)
    a, b, d, e = (
        round(value, 15) for value in (math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle))
    )
    c = a * (-width / 2) + b * (-height / 2) + width / 2
    f = d * (-width / 2) + e * (-height / 2) + height / 2
    corners = ((0, 0), (width, 0), (width, height), (0, height))
    xs = [a * x + b * y + c for x, y in corners]
    ys = [d * x + e * y + f for x, y in corners]
    return math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))
