"""The presets an upload may name: the built-in ones and the operators' own (PRESETS setting)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ServicesDep

router = APIRouter(tags=["presets"])


class PresetResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "thumbnail",
                    "description": "Fits in 256 × 256 (never enlarged); same format.",
                    "ops": [{"op": "resize", "width": 256, "height": 256, "mode": "fit", "enlarge": False}],
                }
            ]
        }
    )

    name: str
    description: str
    ops: list[dict[str, Any]] = Field(description="What it does, in the form of the upload's `ops` field.")


@router.get("/presets", response_model=list[PresetResponse])
async def list_presets(services: ServicesDep) -> list[PresetResponse]:
    """Every preset `POST /upload` accepts in its `preset` field (or as a value in `outputs`)."""
    return [
        PresetResponse(
            name=name,
            description=preset.description,
            ops=[op.model_dump(exclude_none=True) for op in preset.ops],
        )
        for name, preset in services.presets.items()
    ]
