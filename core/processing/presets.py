"""Presets: named ops lists a client may ask for, built in or added by the PRESETS setting."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config import ConfigError, Settings
from core.processing.operations import (
    MAX_OPS,
    OPS,
    Op,
    Operation,
    ProcessingInvalid,
    check_ops,
    check_references,
    first_error,
)
from core.processing.outputs import USABLE_NAME

DEFAULT_PRESET = "default"


@dataclass(frozen=True)
class Preset:
    description: str
    ops: tuple[Op, ...]


def _ops(raw: list[dict[str, Any]]) -> tuple[Op, ...]:
    return tuple(OPS.validate_python(raw))


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
        return build_presets(settings.presets, watermark_images=settings.watermark_images)
    except ProcessingInvalid as exc:
        raise ConfigError(str(exc)) from None


def build_presets(
    configured: Mapping[str, Any], *, watermark_images: Collection[str] = ()
) -> dict[str, Preset]:
    """The built-in presets plus the PRESETS setting (which may replace a built-in one).

    Raises ProcessingInvalid naming the bad preset (an overlay of an image `watermark_images` does
    not name too); start-up turns that into a refusal to start. A preset with `gravity: "focus"` is
    fine: the uploads that choose it must give the point.
    """
    presets = dict(BUILTIN_PRESETS)
    for name, raw in configured.items():
        if not USABLE_NAME.fullmatch(str(name)):
            raise ProcessingInvalid(
                f"PRESETS: {name!r} is not a usable preset name (letters, digits, - and _)"
            )
        try:
            parsed = _PresetSetting.model_validate(raw)
            check_ops(parsed.ops, f"PRESETS.{name}.ops")
            check_references(tuple(parsed.ops), f"PRESETS.{name}.ops", watermark_images, focus=True)
        except ValidationError as exc:
            raise ProcessingInvalid(f"PRESETS.{name}{first_error(exc)}") from None
        presets[str(name)] = Preset(parsed.description or f"Operator preset {name}.", tuple(parsed.ops))
    return presets
