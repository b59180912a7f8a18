"""Tests for the core.processing package: what an upload's `preset`, `ops` and `outputs` fields
resolve to, the messages a bad request gets (each names the field and, where there is a choice, what
is allowed), operator presets, the stored form, and the sizes the API checks before queueing."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from config import ConfigError
from core.processing.cost import render_pixels
from core.processing.forms import FOCUS_INVALID, resolve
from core.processing.operations import (
    FOCUS_MISSING,
    GRAVITIES,
    MAX_BYTES_ENCODES,
    MAX_OPS,
    MAX_SIDE,
    MAX_TEXT_CHARS,
    OPERATION_NAMES,
    OUTPUT_FORMATS,
    POSITIONS,
    Crop,
    Format,
    Pad,
    ProcessingInvalid,
    Resize,
    Rotate,
    Trim,
    Watermark,
)
from core.processing.outputs import MAX_OUTPUTS, SINGLE_OUTPUT, Output, Processing
from core.processing.presets import BUILTIN_PRESETS, DEFAULT_PRESET, build_presets, configured_presets
from core.processing.sizes import output_size, rotated_size

TEXT = "Stamped by imagequeue"


def resolved(
    *,
    preset: str | None = None,
    ops: Any = None,
    outputs: Any = None,
    presets: dict[str, Any] | None = None,
    focus: str | None = None,
    watermark_images: tuple[str, ...] = (),
) -> Processing:
    """`resolve` with the form fields as the API receives them: strings, JSON for ops and outputs."""
    return resolve(
        preset=preset,
        ops=ops if ops is None or isinstance(ops, str) else json.dumps(ops),
        outputs=outputs if outputs is None or isinstance(outputs, str) else json.dumps(outputs),
        presets=BUILTIN_PRESETS if presets is None else presets,
        watermark_text=TEXT,
        focus=focus,
        watermark_images=watermark_images,
    )


def refusal(**fields: Any) -> str:
    with pytest.raises(ProcessingInvalid) as raised:
        resolved(**fields)
    return str(raised.value)


# Choosing: nothing, a preset, ops, outputs


def test_nothing_chosen_is_the_default_preset_with_the_text_of_the_day() -> None:
    processing = resolved()

    assert processing.outputs == (
        Output(name=SINGLE_OUTPUT, ops=(Watermark(op="watermark", text=TEXT),), preset=DEFAULT_PRESET),
    )


@pytest.mark.parametrize("name", sorted(BUILTIN_PRESETS))
def test_each_builtin_preset_resolves_to_its_ops(name: str) -> None:
    (output,) = resolved(preset=name).outputs

    assert (output.name, output.preset) == (SINGLE_OUTPUT, name)
    assert [op.op for op in output.ops] == [op.op for op in BUILTIN_PRESETS[name].ops]


def test_ops_resolve_in_order_as_one_output() -> None:
    (output,) = resolved(
        ops=[
            {"op": "rotate", "degrees": 90},
            {"op": "resize", "width": 100},
            {"op": "format", "format": "png"},
        ]
    ).outputs

    assert output == Output(
        name=SINGLE_OUTPUT,
        ops=(
            Rotate(op="rotate", degrees=90),
            Resize(op="resize", width=100),
            Format(op="format", format="png"),
        ),
    )
    assert output.format() == Format(op="format", format="png")


def test_outputs_mix_presets_and_ops_and_keep_their_order() -> None:
    processing = resolved(
        outputs={"small": "thumbnail", "grey": [{"op": "grayscale"}], "big": "web", "plain": "default"}
    )

    assert [(output.name, output.preset) for output in processing.outputs] == [
        ("small", "thumbnail"),
        ("grey", None),
        ("big", "web"),
        ("plain", "default"),
    ]
    assert processing.outputs[1].ops == (BUILTIN_PRESETS["grayscale"].ops[0],)
    assert processing.outputs[0].format() is None
    assert processing.outputs[2].format() == Format(op="format", format="jpeg", quality=85)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"preset": "web", "ops": [{"op": "grayscale"}]}, "preset and ops"),
        ({"preset": "web", "outputs": {"a": "web"}}, "preset and outputs"),
        ({"ops": [{"op": "grayscale"}], "outputs": {"a": "web"}}, "ops and outputs"),
        (
            {"preset": "web", "ops": [{"op": "grayscale"}], "outputs": {"a": "web"}},
            "preset and ops and outputs",
        ),
    ],
)
def test_only_one_of_preset_ops_and_outputs(fields: dict[str, Any], named: str) -> None:
    assert refusal(**fields) == f"Send only one of `preset`, `ops` and `outputs` (got {named})."


def test_empty_fields_count_as_not_sent() -> None:
    assert resolved(preset="", ops="", outputs="") == resolved()
    assert resolved(preset="web", ops="") == resolved(preset="web")


# Unknown names


def test_unknown_preset_names_the_field_and_every_preset() -> None:
    message = refusal(preset="huge")

    assert message.startswith("`preset`: unknown preset 'huge'")
    assert message.endswith(f"choose one of {', '.join(BUILTIN_PRESETS)}.")


def test_unknown_preset_in_outputs_names_the_output() -> None:
    message = refusal(outputs={"small": "thumbnail", "odd": "nope"})

    assert message.startswith("`outputs.odd`: unknown preset 'nope'")
    assert all(name in message for name in BUILTIN_PRESETS)


def test_an_operator_preset_is_among_the_choices() -> None:
    presets = build_presets(
        {"banner": {"ops": [{"op": "resize", "width": 1200, "height": 300, "mode": "fill"}]}}
    )
    message = refusal(preset="nope", presets=presets)

    assert message.endswith(f"choose one of {', '.join([*BUILTIN_PRESETS, 'banner'])}.")
    assert resolved(preset="banner", presets=presets).outputs[0].preset == "banner"


@pytest.mark.parametrize(
    ("raw", "place"),
    [
        ([{"op": "sepia"}], "`ops`: [0]"),
        ([{"op": "grayscale"}, {"op": "Resize", "width": 10}], "`ops`: [1]"),
        ([{"width": 10}], "`ops`: [0]"),  # no `op` at all
    ],
)
def test_unknown_op_names_the_place_and_every_op(raw: list[dict[str, Any]], place: str) -> None:
    assert refusal(ops=raw) == f"{place}: unknown op; allowed: {', '.join(OPERATION_NAMES)}"


def test_unknown_op_in_outputs_names_the_output() -> None:
    message = refusal(outputs={"a": "web", "b": [{"op": "grayscale"}, {"op": "invert"}]})
    assert message == f"`outputs.b`: [1]: unknown op; allowed: {', '.join(OPERATION_NAMES)}"


# Bad parameters: the message names the field, and for a choice every allowed value

BAD_PARAMETERS: list[tuple[dict[str, Any], str, list[str]]] = [
    ({"op": "resize", "width": 0}, "[0].width", ["greater than or equal to 1"]),
    ({"op": "resize", "width": MAX_SIDE + 1}, "[0].width", [f"less than or equal to {MAX_SIDE}"]),
    ({"op": "resize", "height": -5}, "[0].height", ["greater than or equal to 1"]),
    ({"op": "resize", "width": 10.5}, "[0].width", ["integer"]),
    ({"op": "resize", "width": "wide"}, "[0].width", ["integer"]),
    ({"op": "resize", "width": 10, "mode": "cover"}, "[0].mode", ["'fit'", "'fill'", "'exact'"]),
    ({"op": "resize"}, "[0]", ["resize needs `width`, `height` or both"]),
    ({"op": "resize", "width": 10, "mode": "fill"}, "[0]", ["'fill' needs both `width` and `height`"]),
    ({"op": "resize", "height": 10, "mode": "exact"}, "[0]", ["'exact' needs both `width` and `height`"]),
    ({"op": "resize", "width": 10, "enlarge": "maybe"}, "[0].enlarge", ["boolean"]),
    (
        {"op": "crop", "left": 0, "top": 0, "width": 10},
        "[0]",
        ["`left`, `top`, `width` and `height`, or `aspect`"],
    ),
    ({"op": "crop", "aspect": "1:1", "left": 0}, "[0]", ["either `aspect` or a box"]),
    ({"op": "crop", "aspect": "wide"}, "[0].aspect", ['"16:9"']),
    ({"op": "crop", "aspect": "0:9"}, "[0].aspect", ['"16:9"']),
    (
        {"op": "crop", "left": -1, "top": 0, "width": 10, "height": 10},
        "[0].left",
        ["greater than or equal to 0"],
    ),
    (
        {"op": "crop", "left": 0, "top": 0, "width": 0, "height": 10},
        "[0].width",
        ["greater than or equal to 1"],
    ),
    ({"op": "rotate"}, "[0].degrees", ["Field required"]),
    ({"op": "rotate", "degrees": 361}, "[0].degrees", ["less than or equal to 360"]),
    ({"op": "rotate", "degrees": -361}, "[0].degrees", ["greater than or equal to -360"]),
    ({"op": "flip", "direction": "diagonal"}, "[0].direction", ["'horizontal'", "'vertical'"]),
    ({"op": "flip"}, "[0].direction", ["Field required"]),
    ({"op": "grayscale", "strength": 1}, "[0].strength", ["Extra inputs are not permitted"]),
    ({"op": "blur", "radius": 0}, "[0].radius", ["greater than 0"]),
    ({"op": "blur", "radius": 100.5}, "[0].radius", ["less than or equal to 100"]),
    ({"op": "sharpen", "radius": 51}, "[0].radius", ["less than or equal to 50"]),
    ({"op": "sharpen", "percent": 0}, "[0].percent", ["greater than or equal to 1"]),
    ({"op": "sharpen", "threshold": 256}, "[0].threshold", ["less than or equal to 255"]),
    ({"op": "watermark", "position": "middle"}, "[0].position", [f"'{p}'" for p in POSITIONS]),
    ({"op": "watermark", "color": "sunset"}, "[0].color", ["'sunset' is not a colour", "#rrggbb"]),
    ({"op": "watermark", "size": 5}, "[0].size", ["greater than or equal to 6"]),
    ({"op": "watermark", "size": 1001}, "[0].size", ["less than or equal to 1000"]),
    ({"op": "watermark", "opacity": 1.5}, "[0].opacity", ["less than or equal to 1"]),
    ({"op": "watermark", "text": ""}, "[0].text", ["at least 1 character"]),
    ({"op": "watermark", "text": "x" * (MAX_TEXT_CHARS + 1)}, "[0].text", [f"at most {MAX_TEXT_CHARS}"]),
    ({"op": "format", "format": "gif"}, "[0].format", [f"'{f}'" for f in OUTPUT_FORMATS]),
    ({"op": "format", "format": "JPEG"}, "[0].format", [f"'{f}'" for f in OUTPUT_FORMATS]),
    ({"op": "format"}, "[0].format", ["Field required"]),
    ({"op": "format", "format": "jpeg", "quality": 0}, "[0].quality", ["greater than or equal to 1"]),
    ({"op": "format", "format": "jpeg", "quality": 101}, "[0].quality", ["less than or equal to 100"]),
    # Issue 15's operations and parameters.
    (
        {"op": "resize", "width": 10, "height": 10, "mode": "fill", "gravity": "up"},
        "[0].gravity",
        [*(f"'{g}'" for g in GRAVITIES)],
    ),
    ({"op": "resize", "width": 10, "gravity": "smart"}, "[0]", ['`gravity` applies to mode "fill" only']),
    (
        {"op": "resize", "width": 10, "height": 10, "background": "red"},
        "[0]",
        ['`background` applies to mode "pad" only'],
    ),
    (
        {"op": "resize", "width": 10, "height": 10, "mode": "pad", "background": "sunset"},
        "[0].background",
        ["'sunset' is not a colour", "#rrggbbaa"],
    ),
    ({"op": "resize", "width": 10, "mode": "pad"}, "[0]", ["'pad' needs both `width` and `height`"]),
    (
        {"op": "crop", "left": 0, "top": 0, "width": 5, "height": 5, "gravity": "top"},
        "[0]",
        ["crop `gravity` applies to `aspect` only"],
    ),
    (
        {"op": "crop", "aspect": "1:1", "gravity": "north"},
        "[0].gravity",
        ["'top-left'", "'smart'", "'focus'"],
    ),
    ({"op": "trim", "threshold": 256}, "[0].threshold", ["less than or equal to 255"]),
    ({"op": "trim", "threshold": -1}, "[0].threshold", ["greater than or equal to 0"]),
    ({"op": "pad"}, "[0].margin", ["Field required"]),
    ({"op": "pad", "margin": -1}, "[0].margin", ["greater than or equal to 0"]),
    ({"op": "pad", "margin": 4, "background": "nope"}, "[0].background", ["'nope' is not a colour"]),
    ({"op": "overlay"}, "[0].image", ["Field required"]),
    ({"op": "overlay", "image": "logo", "position": "middle"}, "[0].position", [f"'{p}'" for p in POSITIONS]),
    ({"op": "overlay", "image": "logo", "scale": 0}, "[0].scale", ["greater than or equal to 0.01"]),
    ({"op": "overlay", "image": "logo", "scale": 1.5}, "[0].scale", ["less than or equal to 1"]),
    ({"op": "overlay", "image": "logo", "opacity": -0.1}, "[0].opacity", ["greater than or equal to 0"]),
    ({"op": "overlay", "image": "logo", "margin": -1}, "[0].margin", ["greater than or equal to 0"]),
    ({"op": "overlay", "image": "logo", "tile": "yes please"}, "[0].tile", ["boolean"]),
    (
        {"op": "format", "format": "png", "max_bytes": 5000},
        "[0]",
        ["`max_bytes` needs a lossy format: jpeg, webp"],
    ),
    ({"op": "format", "format": "jpeg", "max_bytes": 99}, "[0].max_bytes", ["greater than or equal to 100"]),
]


@pytest.mark.parametrize(
    ("op", "place", "fragments"),
    BAD_PARAMETERS,
    ids=[f"{op['op']}-{place}" for op, place, _ in BAD_PARAMETERS],
)
def test_bad_parameter_names_the_field_and_what_is_allowed(
    op: dict[str, Any], place: str, fragments: list[str]
) -> None:
    message = refusal(ops=[op])

    assert message.startswith(f"`ops`: {place}: ")
    assert [fragment for fragment in fragments if fragment not in message] == []


def test_every_op_has_a_bad_parameter_case() -> None:
    assert {op["op"] for op, _, _ in BAD_PARAMETERS} == set(OPERATION_NAMES)


# What ops refer to outside themselves: the upload's focus point, the operator's watermark images


@pytest.mark.parametrize("raw", ["0.3", "0.3,0.6,0.1", "a,b", "1.2,0.5", "-0.1,0.5", "nan,0.5", "0.5,inf"])
def test_a_bad_focus_is_refused(raw: str) -> None:
    assert refusal(ops=[{"op": "grayscale"}], focus=raw) == FOCUS_INVALID


def test_the_focus_is_kept_with_the_processing_and_read_back() -> None:
    ops = [{"op": "crop", "aspect": "1:1", "gravity": "focus"}]
    processing = resolved(ops=ops, focus="0.25, 1")

    assert processing.focus == (0.25, 1.0)
    stored = processing.to_json()
    assert stored["focus"] == [0.25, 1.0]
    assert Processing.from_json(json.loads(json.dumps(stored))) == processing


def test_without_a_focus_the_stored_form_is_as_before() -> None:
    assert "focus" not in resolved(preset="web").to_json()


def test_gravity_focus_without_a_focus_point_is_refused_naming_the_op() -> None:
    ops = [{"op": "grayscale"}, {"op": "resize", "width": 9, "height": 9, "mode": "fill", "gravity": "focus"}]

    assert refusal(ops=ops) == FOCUS_MISSING.format(field="ops", index=1)
    assert refusal(outputs={"sq": [{"op": "crop", "aspect": "1:1", "gravity": "focus"}]}) == (
        FOCUS_MISSING.format(field="outputs.sq", index=0)
    )


def test_an_overlay_of_an_unknown_image_is_refused_naming_the_known_ones() -> None:
    ops = [{"op": "overlay", "image": "logo"}]

    assert refusal(ops=ops) == (
        "`ops[0].image`: unknown watermark image 'logo'; none are configured (WATERMARK_IMAGES)."
    )
    assert refusal(ops=ops, watermark_images=("seal", "badge")) == (
        "`ops[0].image`: unknown watermark image 'logo'; configured: badge, seal."
    )
    assert resolved(ops=ops, watermark_images=("logo",)).outputs[0].ops[0].image == "logo"  # type: ignore[attr-defined]


def test_an_operator_preset_overlaying_an_unknown_image_stops_start_up() -> None:
    settings = SimpleNamespace(
        presets={"stamped": {"ops": [{"op": "overlay", "image": "logo"}]}}, watermark_images={"seal": "x"}
    )

    with pytest.raises(
        ConfigError, match=r"`PRESETS.stamped.ops\[0\].image`: unknown watermark image 'logo'"
    ):
        configured_presets(settings)  # type: ignore[arg-type]


def test_the_new_sizes() -> None:
    pad_box = Resize(op="resize", width=300, height=200, mode="pad")
    assert output_size([pad_box], 1000, 1000) == (300, 200)
    assert output_size([pad_box], 50, 20) == (300, 200), "padded to the box even when not enlarged"
    assert output_size([Pad(op="pad", margin=7)], 100, 50) == (114, 64)
    assert output_size([Trim(op="trim")], 100, 50) == (100, 50), "a trim is bounded by its input"


def test_max_bytes_counts_every_encode_of_its_search() -> None:
    plain = resolved(ops=[{"op": "format", "format": "jpeg"}])
    searched = resolved(ops=[{"op": "format", "format": "jpeg", "max_bytes": 10_000}])
    pixels = 1000 * 800

    assert render_pixels(plain, 1000, 800, 1, "JPEG") == pixels * 3  # decode, step, encode
    assert render_pixels(searched, 1000, 800, 1, "JPEG") == pixels * (2 + MAX_BYTES_ENCODES)


def test_a_bad_parameter_in_a_later_op_names_its_index() -> None:
    message = refusal(ops=[{"op": "grayscale"}, {"op": "blur"}, {"op": "flip", "direction": "up"}])
    assert message == "`ops`: [2].direction: must be one of 'horizontal' or 'vertical'"


def test_a_bad_parameter_in_outputs_names_the_output() -> None:
    message = refusal(outputs={"ok": "web", "odd": [{"op": "resize", "width": 10, "mode": "cover"}]})
    assert message == "`outputs.odd`: [0].mode: must be one of 'fit', 'fill', 'exact' or 'pad'"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("op", ["rotate", "blur", "watermark"])
def test_not_a_number_is_refused(op: str, value: str) -> None:
    # Python's json accepts these words; a NaN opacity or angle would only fail in the worker.
    field = {"rotate": "degrees", "blur": "radius", "watermark": "opacity"}[op]
    message = refusal(ops=f'[{{"op": "{op}", "{field}": {value}}}]')
    assert message.startswith(f"`ops`: [0].{field}: ")


@pytest.mark.parametrize("raw", ["[{", "resize", "{'op': 'grayscale'}"])
def test_ops_that_are_not_json(raw: str) -> None:
    assert refusal(ops=raw) == "`ops` is not valid JSON."


@pytest.mark.parametrize("raw", [[], {"op": "grayscale"}, "grayscale", 3, None])
def test_ops_must_be_a_non_empty_list(raw: Any) -> None:
    assert refusal(ops=json.dumps(raw)) == (
        '`ops` must be a non-empty JSON list of operations such as {"op": "resize"}.'
    )


def test_format_must_be_the_last_operation() -> None:
    message = refusal(ops=[{"op": "format", "format": "png"}, {"op": "grayscale"}])
    assert message == "`ops[0]`: `format` must be the last operation."
    message = refusal(outputs={"a": [{"op": "grayscale"}, {"op": "format", "format": "png"}, {"op": "blur"}]})
    assert message == "`outputs.a[1]`: `format` must be the last operation."


def test_two_formats_are_refused_too() -> None:
    message = refusal(ops=[{"op": "format", "format": "png"}, {"op": "format", "format": "webp"}])
    assert message == "`ops[0]`: `format` must be the last operation."


# Bounds


def test_ops_are_bounded() -> None:
    assert len(resolved(ops=[{"op": "grayscale"}] * MAX_OPS).outputs[0].ops) == MAX_OPS
    assert (
        refusal(ops=[{"op": "grayscale"}] * (MAX_OPS + 1)) == f"`ops` may hold at most {MAX_OPS} operations."
    )
    message = refusal(outputs={"a": [{"op": "grayscale"}] * (MAX_OPS + 1)})
    assert message == f"`outputs.a` may hold at most {MAX_OPS} operations."


def test_outputs_are_bounded() -> None:
    allowed = {f"o{index}": "thumbnail" for index in range(MAX_OUTPUTS)}
    assert len(resolved(outputs=allowed).outputs) == MAX_OUTPUTS
    too_many = {**allowed, "extra": "thumbnail"}
    assert refusal(outputs=too_many) == f"`outputs` may name at most {MAX_OUTPUTS} outputs."


def test_sides_are_bounded() -> None:
    exact = {"op": "resize", "width": MAX_SIDE, "height": MAX_SIDE, "mode": "exact"}
    assert resolved(ops=[exact]).outputs[0].ops[0] == Resize(
        op="resize", width=MAX_SIDE, height=MAX_SIDE, mode="exact"
    )
    for field in ("width", "height"):
        message = refusal(ops=[{**exact, field: MAX_SIDE + 1}])
        assert message == f"`ops`: [0].{field}: Input should be less than or equal to {MAX_SIDE}"
    assert refusal(ops=[{"op": "crop", "left": MAX_SIDE + 1, "top": 0, "width": 1, "height": 1}]).startswith(
        "`ops`: [0].left: Input should be less than or equal to"
    )


@pytest.mark.parametrize("name", ["a", "A9", "thumb_2x", "web-large", "x" * 32])
def test_usable_output_names(name: str) -> None:
    assert resolved(outputs={name: "thumbnail"}).outputs[0].name == name


@pytest.mark.parametrize(
    "name", ["", "-lead", "_lead", "x" * 33, "two words", "dot.ted", "a/b", "naïve", "x\n"]
)
def test_unusable_output_names(name: str) -> None:
    assert refusal(outputs={name: "thumbnail"}) == (
        f"`outputs`: {name[:40]!r} is not a usable output name (1-32 letters, digits, - and _)."
    )


@pytest.mark.parametrize("raw", ["{}", "[]", '["thumbnail"]', '"thumbnail"', "3"])
def test_outputs_must_be_a_non_empty_object(raw: str) -> None:
    assert (
        refusal(outputs=raw) == "`outputs` must be a JSON object of output name -> preset name or ops list."
    )


def test_outputs_that_are_not_json() -> None:
    assert refusal(outputs="{small: thumbnail}") == "`outputs` is not valid JSON."


@pytest.mark.parametrize("spec", [{"op": "grayscale"}, 3, None, []])
def test_an_output_is_a_preset_name_or_an_ops_list(spec: Any) -> None:
    assert refusal(outputs={"a": spec}) == (
        '`outputs.a` must be a non-empty JSON list of operations such as {"op": "resize"}.'
    )


# Operator presets


def test_operator_presets_join_the_builtin_ones() -> None:
    presets = build_presets(
        {
            "banner": {
                "description": "Wide banner",
                "ops": [{"op": "resize", "width": 1200, "height": 300, "mode": "fill"}],
            },
            "square_png": {"ops": [{"op": "crop", "aspect": "1:1"}, {"op": "format", "format": "png"}]},
        }
    )

    assert list(presets) == [*BUILTIN_PRESETS, "banner", "square_png"]
    assert presets["banner"].description == "Wide banner"
    assert presets["square_png"].description == "Operator preset square_png."
    assert presets["banner"].ops == (Resize(op="resize", width=1200, height=300, mode="fill"),)
    assert presets["square_png"].ops == (Crop(op="crop", aspect="1:1"), Format(op="format", format="png"))
    assert build_presets({}) == BUILTIN_PRESETS


def test_an_operator_preset_may_replace_a_builtin_one() -> None:
    presets = build_presets({"thumbnail": {"ops": [{"op": "resize", "width": 128, "height": 128}]}})

    assert list(presets) == list(BUILTIN_PRESETS)
    assert presets["thumbnail"].ops == (Resize(op="resize", width=128, height=128),)
    assert resolved(preset="thumbnail", presets=presets).outputs[0].ops[0].width == 128  # type: ignore[attr-defined]
    # The built-in table itself is untouched.
    assert BUILTIN_PRESETS["thumbnail"].ops[0].width == 256  # type: ignore[attr-defined]


INVALID_PRESETS: list[tuple[str, Any, str]] = [
    ("bad name", {"ops": [{"op": "grayscale"}]}, "PRESETS: 'bad name' is not a usable preset name"),
    ("small", {"ops": [{"op": "resize", "width": 0}]}, "PRESETS.small"),
    ("small", {"ops": [{"op": "sepia"}]}, "PRESETS.small"),
    ("small", {"ops": []}, "PRESETS.small"),
    ("small", {"description": "no ops"}, "PRESETS.small"),
    ("small", {"ops": [{"op": "grayscale"}], "colour": "red"}, "PRESETS.small"),
    ("small", {"ops": [{"op": "grayscale"}], "description": "x" * 201}, "PRESETS.small"),
    ("small", {"ops": [{"op": "grayscale"}] * (MAX_OPS + 1)}, "PRESETS.small"),
    ("small", "thumbnail", "PRESETS.small"),
    ("small", {"ops": [{"op": "format", "format": "png"}, {"op": "grayscale"}]}, "PRESETS.small.ops[0]"),
]


@pytest.mark.parametrize(("name", "raw", "named"), INVALID_PRESETS)
def test_an_invalid_operator_preset_names_itself(name: str, raw: Any, named: str) -> None:
    with pytest.raises(ProcessingInvalid) as raised:
        build_presets({"fine": {"ops": [{"op": "grayscale"}]}, name: raw})
    assert named in str(raised.value)


def test_an_operator_preset_error_names_the_field_and_allowed_values() -> None:
    def message(raw: Any) -> str:
        with pytest.raises(ProcessingInvalid) as raised:
            build_presets({"small": raw})
        return str(raised.value)

    assert message({"ops": [{"op": "sepia"}]}) == (
        f"PRESETS.small.ops[0]: unknown op; allowed: {', '.join(OPERATION_NAMES)}"
    )
    assert message({"ops": [{"op": "resize", "width": 0}]}) == (
        "PRESETS.small.ops[0].width: Input should be greater than or equal to 1"
    )
    assert message({"ops": [{"op": "format", "format": "gif"}]}) == (
        f"PRESETS.small.ops[0].format: must be one of {_choices(OUTPUT_FORMATS)}"
    )


def _choices(values: tuple[str, ...]) -> str:
    quoted = [repr(value) for value in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def test_a_bad_presets_setting_stops_start_up() -> None:
    settings: Any = SimpleNamespace(presets={"small": {"ops": [{"op": "sepia"}]}}, watermark_images={})
    with pytest.raises(ConfigError) as raised:
        configured_presets(settings)
    assert "PRESETS.small" in str(raised.value)
    assert list(configured_presets(SimpleNamespace(presets={}, watermark_images={}))) == list(BUILTIN_PRESETS)  # type: ignore[arg-type]


# The stored form


def test_to_json_and_from_json_round_trip() -> None:
    processing = resolved(
        outputs={
            **{name: name for name in BUILTIN_PRESETS},
            "custom": [
                {"op": "crop", "left": 1, "top": 2, "width": 30, "height": 40},
                {"op": "rotate", "degrees": -22.5},
                {"op": "flip", "direction": "vertical"},
                {"op": "blur", "radius": 1.5},
                {"op": "sharpen", "radius": 1, "percent": 200, "threshold": 0},
                {"op": "watermark", "text": "© me", "position": "bottom-right", "size": 20, "opacity": 0.4},
                {"op": "format", "format": "webp", "quality": 70},
            ],
        }
    )
    stored = json.loads(json.dumps(processing.to_json()))  # what a JSON column gives back

    assert Processing.from_json(stored) == processing
    assert stored["outputs"][0] == {"name": "default", "preset": "default", "ops": [_watermark_json(TEXT)]}
    assert stored["outputs"][-1]["preset"] is None


def _watermark_json(text: str) -> dict[str, Any]:
    return {"op": "watermark", "text": text, "position": "top-left", "color": "red", "opacity": 1.0}


def test_watermark_text_is_filled_at_resolve_time() -> None:
    (output,) = resolve(
        preset=None,
        ops=json.dumps([{"op": "watermark"}, {"op": "watermark", "text": "own text"}]),
        outputs=None,
        presets=BUILTIN_PRESETS,
        watermark_text="Text of the day",
    ).outputs

    assert [op.text for op in output.ops] == ["Text of the day", "own text"]  # type: ignore[attr-defined]
    # A later WATERMARK_TEXT does not change what was stored.
    stored = json.loads(json.dumps(Processing((output,)).to_json()))
    assert stored["outputs"][0]["ops"][0]["text"] == "Text of the day"
    # The shared preset keeps no text of its own.
    assert BUILTIN_PRESETS[DEFAULT_PRESET].ops == (Watermark(op="watermark"),)


def test_watermark_text_is_filled_in_every_output() -> None:
    processing = resolved(outputs={"a": "default", "b": [{"op": "resize", "width": 9}, {"op": "watermark"}]})
    texts = [op.text for output in processing.outputs for op in output.ops if isinstance(op, Watermark)]
    assert texts == [TEXT, TEXT]


# output_size: what the API checks against MAX_OUTPUT_PIXELS before queueing


def ops_of(*raw: dict[str, Any]) -> tuple[Any, ...]:
    return resolved(ops=list(raw)).outputs[0].ops


@pytest.mark.parametrize(
    ("op", "size", "expected"),
    [
        ({"op": "resize", "width": 100, "height": 100}, (400, 200), (100, 50)),
        ({"op": "resize", "width": 100, "height": 100}, (200, 400), (50, 100)),
        ({"op": "resize", "width": 100}, (400, 300), (100, 75)),
        ({"op": "resize", "height": 100}, (400, 300), (133, 100)),
        ({"op": "resize", "width": 1000, "height": 1000}, (400, 300), (400, 300)),  # never enlarged
        ({"op": "resize", "width": 1000, "height": 1000, "enlarge": True}, (400, 300), (1000, 750)),
        ({"op": "resize", "width": 1, "height": 1}, (4000, 3), (1, 1)),  # never zero
        ({"op": "resize", "width": 100, "height": 50, "mode": "fill"}, (400, 400), (100, 50)),
        ({"op": "resize", "width": 900, "height": 50, "mode": "fill"}, (400, 400), (900, 50)),
        ({"op": "resize", "width": 30, "height": 70, "mode": "exact"}, (400, 300), (30, 70)),
        ({"op": "crop", "left": 10, "top": 20, "width": 30, "height": 40}, (400, 300), (30, 40)),
        ({"op": "crop", "aspect": "1:1"}, (400, 300), (300, 300)),
        ({"op": "crop", "aspect": "16:9"}, (400, 400), (400, 225)),
        ({"op": "crop", "aspect": "9:16"}, (400, 400), (225, 400)),
        ({"op": "rotate", "degrees": 90}, (400, 300), (300, 400)),
        ({"op": "rotate", "degrees": -90}, (400, 300), (300, 400)),
        ({"op": "rotate", "degrees": 180}, (400, 300), (400, 300)),
        ({"op": "rotate", "degrees": 270}, (400, 300), (300, 400)),
        ({"op": "rotate", "degrees": 360}, (400, 300), (400, 300)),
        ({"op": "flip", "direction": "horizontal"}, (400, 300), (400, 300)),
        ({"op": "grayscale"}, (400, 300), (400, 300)),
        ({"op": "blur", "radius": 20}, (400, 300), (400, 300)),
        ({"op": "sharpen"}, (400, 300), (400, 300)),
        ({"op": "watermark", "text": "x"}, (400, 300), (400, 300)),
        ({"op": "format", "format": "png"}, (400, 300), (400, 300)),
    ],
)
def test_output_size_of_each_op(op: dict[str, Any], size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert output_size(ops_of(op), *size) == expected


def test_output_size_follows_the_chain() -> None:
    ops = ops_of(
        {"op": "rotate", "degrees": 90},
        {"op": "crop", "aspect": "1:2"},
        {"op": "resize", "width": 100},
        {"op": "crop", "left": 0, "top": 0, "width": 50, "height": 60},
    )
    # 400×300 → 300×400 → 200×400 → 100×200 → 50×60
    assert output_size(ops, 400, 300) == (50, 60)


@pytest.mark.parametrize("degrees", [1, 10, 30, 45, 60, 89.5, 100, 135, 200, 300, -45, -170, 359])
@pytest.mark.parametrize("size", [(100, 60), (101, 61), (37, 91), (7, 3)])
def test_rotated_size_is_the_canvas_pillow_makes(degrees: float, size: tuple[int, int]) -> None:
    # worker.operations.rotate hands Pillow the angle modulo 360.
    made = Image.new("L", size).rotate(degrees % 360, expand=True).size
    assert rotated_size(degrees, *size) == made
    assert output_size(ops_of({"op": "rotate", "degrees": degrees}), *size) == made


def test_rotated_size_grows_the_canvas() -> None:
    width, height = rotated_size(45, 100, 100)
    assert width == height
    assert math.isclose(width, 100 * math.sqrt(2), abs_tol=2)
