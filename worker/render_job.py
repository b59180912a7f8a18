"""One task's rendering, from its input file to its outputs in place: runnable in a thread or in a
child process (so everything it takes and returns pickles, and it touches no database or NATS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config import Settings
from core.formats import EXTENSIONS
from core.processing import OutputRecord, Processing, configured_presets, default_processing
from core.storage import Storage, move_into_place, output_name_for, remove_quietly
from worker.imaging import EncoderSettings, RenderLimits, render


@dataclass(frozen=True)
class RenderSettings:
    limits: RenderLimits
    encoder: EncoderSettings
    # For rows from before tasks stored their processing: what every upload got then.
    legacy: Processing


def render_settings(settings: Settings) -> RenderSettings:
    """The settings' processing limits and encoder choices; refuses to start on a bad PRESETS."""
    presets = configured_presets(settings)
    return RenderSettings(
        limits=RenderLimits(
            max_pixels=settings.max_image_pixels,
            max_frames=settings.max_frames,
            max_output_pixels=settings.max_output_pixels,
        ),
        encoder=EncoderSettings(webp_method=settings.webp_method, keep_metadata=settings.keep_metadata),
        legacy=default_processing(presets, settings.watermark_text),
    )


def render_task(
    storage: Storage, settings: RenderSettings, input_name: str, processing: Processing
) -> list[dict[str, Any]]:
    """Decode once, render every output to a temporary file, then rename each into place.

    Returns the outputs as the row stores them (OutputRecord). Output names derive from the
    input's, so a second run replaces the first one's files rather than adding to them.
    """
    temps = [(output, storage.temp_processed_path()) for output in processing.outputs]
    try:
        source = storage.upload_path(input_name)
        results = render(source, temps, limits=settings.limits, encoder=settings.encoder)
        records = []
        for index, ((output, temp), result) in enumerate(zip(temps, results, strict=True)):
            file = output_name_for(input_name, EXTENSIONS[result.format], index)
            move_into_place(temp, storage.processed_path(file))
            records.append(
                OutputRecord(
                    name=output.name,
                    file=file,
                    format=result.format,
                    width=result.width,
                    height=result.height,
                    frames=result.frames,
                    size_bytes=result.size_bytes,
                ).model_dump()
            )
    finally:
        for _, temp in temps:
            remove_quietly(temp)
    return records
