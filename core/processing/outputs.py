"""A task's outputs as its row stores them: `Processing` (what to make, the `processing` column)
and `OutputRecord` (what was made, the `outputs` column, once `done`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from core.processing.operations import OPS, Format, Op

MAX_OUTPUTS = 8
# The output of an upload that asked for a preset or ops rather than named outputs.
SINGLE_OUTPUT = "image"
# What an output (or a preset) may be called: it appears in URLs, JSON keys and metric labels.
USABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Output:
    """One derivative: its name (the key of `outputs`), the preset it came from, and its ops."""

    name: str
    ops: tuple[Op, ...]
    preset: str | None = None

    def format(self) -> Format | None:
        return self.ops[-1] if self.ops and isinstance(self.ops[-1], Format) else None


@dataclass(frozen=True)
class Processing:
    outputs: tuple[Output, ...]
    # The upload's `focus` field: (x, y) as fractions of the picture as displayed (after its EXIF
    # orientation), from the top left; what `gravity: "focus"` keeps.
    focus: tuple[float, float] | None = None
    # How many times the task was reprocessed (core/reprocessing.py): part of its output names.
    generation: int = 0

    def label(self) -> str:
        """A short, bounded name for metrics: the preset, or `ops` / `outputs`."""
        if len(self.outputs) > 1:
            return "outputs"
        return self.outputs[0].preset or "ops"

    def to_json(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "outputs": [
                {
                    "name": output.name,
                    "preset": output.preset,
                    "ops": [op.model_dump(exclude_none=True) for op in output.ops],
                }
                for output in self.outputs
            ]
        }
        # Only when given: a row without a focus reads (and compares, for Idempotency-Key) as before.
        if self.focus is not None:
            stored["focus"] = list(self.focus)
        if self.generation:
            stored["generation"] = self.generation
        return stored

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> Processing:
        focus = stored.get("focus")
        return cls(
            tuple(
                Output(
                    name=item["name"], preset=item.get("preset"), ops=tuple(OPS.validate_python(item["ops"]))
                )
                for item in stored["outputs"]
            ),
            focus=(float(focus[0]), float(focus[1])) if focus else None,
            generation=int(stored.get("generation", 0)),
        )


class OutputRecord(BaseModel):
    """One output as the row stores it once the task is `done`.

    The worker writes every field. The figures are null only on tasks finished before rows
    recorded their outputs: the migration that filled those in had no way to know them.
    """

    name: str
    file: str = Field(description="Generated file name in PROCESSED_DIR.")
    format: str = Field(description="Pillow's name: JPEG, PNG, GIF, WEBP, BMP or AVIF.")
    width: int | None
    height: int | None
    frames: int | None
    size_bytes: int | None
