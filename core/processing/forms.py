"""The upload form's `preset`, `ops`, `outputs` and `focus` fields, resolved into the `Processing` a
task stores; ProcessingInvalid names the field that is wrong."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from core.json_fields import JsonFieldInvalid, parse_json_field
from core.processing.operations import (
    MAX_OPS,
    OPS,
    Op,
    ProcessingInvalid,
    Watermark,
    check_ops,
    check_references,
    first_error,
)
from core.processing.outputs import MAX_OUTPUTS, SINGLE_OUTPUT, USABLE_NAME, Output, Processing
from core.processing.presets import DEFAULT_PRESET, Preset

FOCUS_INVALID = "`focus` must be two fractions x,y from 0 to 1 (from the top left), such as 0.3,0.6."


def resolve(
    *,
    preset: str | None,
    ops: str | None,
    outputs: str | None,
    presets: Mapping[str, Preset],
    watermark_text: str,
    focus: str | None = None,
    watermark_images: Collection[str] = (),
) -> Processing:
    """The upload's form fields as a `Processing`; ProcessingInvalid names the field that is wrong.

    `watermark_images`: the names an `overlay` may use (the WATERMARK_IMAGES setting's)."""
    point = parse_focus(focus) if focus else None
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
            if not USABLE_NAME.fullmatch(name):
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
    for output in outputs_tuple:
        field = f"outputs.{output.name}" if outputs else "preset" if output.preset else "ops"
        check_references(output.ops, field, watermark_images, focus=point is not None)
    return Processing(tuple(_with_text(output, watermark_text) for output in outputs_tuple), focus=point)


def parse_focus(raw: str) -> tuple[float, float]:
    """The `focus` field, "x,y" fractions of the picture from its top left: "0.3,0.6"."""
    parts = raw.split(",")
    try:
        x, y = (float(part) for part in parts)
    except ValueError:
        raise ProcessingInvalid(FOCUS_INVALID) from None
    if not all(math.isfinite(value) and 0 <= value <= 1 for value in (x, y)):
        raise ProcessingInvalid(FOCUS_INVALID)
    return x, y


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


def _validated_ops(raw: Any, field: str) -> tuple[Op, ...]:
    if not isinstance(raw, list) or not raw:
        raise ProcessingInvalid(
            f'`{field}` must be a non-empty JSON list of operations such as {{"op": "resize"}}.'
        )
    if len(raw) > MAX_OPS:
        raise ProcessingInvalid(f"`{field}` may hold at most {MAX_OPS} operations.")
    try:
        parsed = OPS.validate_python(raw)
    except ValidationError as exc:
        raise ProcessingInvalid(f"`{field}`: {first_error(exc)}") from None
    check_ops(parsed, field)
    return tuple(parsed)
