"""One task's rendering, from a local input file to finished outputs: runnable in a thread or in a
child process (so everything it takes and returns pickles, and it touches no database or NATS).

Where the storage backend keeps outputs as local files (core.storage's output_placer), the job puts
them in place itself (synced and renamed in the same folder), in the thread or process that
rendered them; otherwise it hands back temporary files for the caller to store.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Settings
from core import tracing
from core.formats import EXTENSIONS, ImageRejected
from core.processing.outputs import Output, OutputRecord, Processing
from core.processing.presets import configured_presets
from core.storage import Folders, output_name_for, remove_quietly
from core.tracing import Step, recording_steps, step
from worker.imaging import EncoderSettings, OutputFailed, RenderLimits, render
from worker.overlays import check_watermark_images
from worker.placeholder import Placeholder


@dataclass(frozen=True)
class RenderSettings:
    limits: RenderLimits
    encoder: EncoderSettings
    # WATERMARK_IMAGES: the paths travel to a child process, each process loads what it uses once.
    watermark_images: dict[str, Path] = field(default_factory=dict)
    # Tracing is on in the worker: the job records its steps' times for the worker to replay as
    # spans (core.tracing), in a child process too.
    record_steps: bool = False


def render_settings(settings: Settings) -> RenderSettings:
    """The settings' processing limits and encoder choices; refuses to start on a bad PRESETS or a
    watermark image it cannot use."""
    # The worker runs what each row stored and never a preset; checked anyway so that a bad
    # setting stops every process that reads it, not only the API.
    configured_presets(settings)
    check_watermark_images(settings.watermark_images)
    return RenderSettings(
        limits=RenderLimits(
            max_pixels=settings.max_image_pixels,
            max_frames=settings.max_frames,
            max_output_pixels=settings.max_output_pixels,
        ),
        encoder=EncoderSettings(
            webp_method=settings.webp_method,
            keep_metadata=settings.keep_metadata,
            keep_icc_profiles=settings.keep_icc_profiles,
        ),
        watermark_images=dict(settings.watermark_images),
        record_steps=tracing.enabled(),
    )


@dataclass(frozen=True)
class RenderedOutput:
    """One finished output: its record as the row will store it, and the temporary file holding it
    (to be stored under `record["file"]`), or None once the job has stored it."""

    record: dict[str, Any]
    temp: Path | None


@dataclass(frozen=True)
class OutputFailure:
    """An output this render could not make, while others were made (or kept from before)."""

    name: str
    # For people: the ImageRejected's words, or what kind of error it was.
    error: str
    # True: it would fail the same way again (the image or the ops); False: it might not.
    final: bool


@dataclass(frozen=True)
class RenderedTask:
    outputs: list[RenderedOutput]
    # Also handed to `report` as soon as it was known; returned too for the callers that could
    # not pass a `report` (a pool of child processes), and for one that missed it.
    placeholder: Placeholder | None
    # Decode, each op, each encode and store, with their times, when RenderSettings.record_steps.
    steps: list[Step] = field(default_factory=list)
    # Outputs that failed while others were made; empty when every output was made.
    failures: list[OutputFailure] = field(default_factory=list)


def render_task(
    folders: Folders,
    settings: RenderSettings,
    source: Path,
    input_name: str,
    processing: Processing,
    place: Callable[[Path, str], None] | None = None,
    temps: list[Path] | None = None,
    kept: frozenset[str] = frozenset(),
    *,
    report: Callable[[Placeholder], None] | None = None,
) -> RenderedTask:
    """Decode `source` once and render every output to a temporary file in PROCESSED_DIR, then
    store each with `place` when given.

    Output names derive from the input's, so a second run replaces the first one's files rather
    than adding to them. On failure no temporary file is left behind. `temps` names the temporary
    files (one per output) where the caller must be able to remove them: a killed child cannot.
    `report` receives the placeholder as soon as the input is decoded (worker.imaging.render).

    `kept` names outputs made by an earlier run and kept (a retry of the failed outputs only):
    they are not rendered. An output that fails while another is made (or kept) is returned as an
    OutputFailure, so that what was made can be kept; when none is, the first error is raised.
    """
    if temps is None:
        temps = temp_paths(folders, processing)
    # Each output keeps its position in `processing`: the file names derive from it.
    planned = [
        (index, output, temp)
        for index, (output, temp) in enumerate(zip(processing.outputs, temps, strict=True))
        if output.name not in kept
    ]
    placeholders: list[Placeholder] = []

    def keep(placeholder: Placeholder) -> None:
        placeholders.append(placeholder)
        if report is not None:
            report(placeholder)

    try:
        with recording_steps(settings.record_steps) as recorder:
            rendered, failures = _render_and_place(
                settings, source, input_name, processing, planned, place, kept, report=keep
            )
    except BaseException:
        for temp in temps:
            remove_quietly(temp)
        raise
    return RenderedTask(
        outputs=rendered,
        placeholder=placeholders[0] if placeholders else None,
        steps=recorder.recorded() if recorder is not None else [],
        failures=failures,
    )


def _render_and_place(
    settings: RenderSettings,
    source: Path,
    input_name: str,
    processing: Processing,
    planned: list[tuple[int, Output, Path]],
    place: Callable[[Path, str], None] | None,
    kept: frozenset[str],
    *,
    report: Callable[[Placeholder], None],
) -> tuple[list[RenderedOutput], list[OutputFailure]]:
    results = render(
        source,
        [(output, temp) for _, output, temp in planned],
        limits=settings.limits,
        encoder=settings.encoder,
        focus=processing.focus,
        watermark_images=settings.watermark_images,
        report=report,
        keep_going=_may_fail_alone,
    )
    made = [result for result in results if not isinstance(result, OutputFailed)]
    errors = [result.error for result in results if isinstance(result, OutputFailed)]
    if errors and not made and not kept:
        raise errors[0]  # nothing to keep: the task fails (or is retried) as a whole
    rendered = []
    failures = []
    for (index, output, temp), result in zip(planned, results, strict=True):
        if isinstance(result, OutputFailed):
            remove_quietly(temp)
            failures.append(_failure(output.name, result.error))
            continue
        file = output_name_for(input_name, EXTENSIONS[result.format], index, processing.generation)
        record = OutputRecord(
            name=output.name,
            file=file,
            format=result.format,
            width=result.width,
            height=result.height,
            frames=result.frames,
            size_bytes=result.size_bytes,
        ).model_dump()
        if place is not None:
            with step("store output", imagequeue__output=output.name):
                place(temp, file)
        rendered.append(RenderedOutput(record=record, temp=None if place is not None else temp))
    return rendered, failures


def _may_fail_alone(exc: Exception) -> bool:
    """Whether one output's error leaves the others worth making: not when the volume is full or
    memory ran out, which every output would meet (the whole attempt is handed back or retried)."""
    if isinstance(exc, MemoryError):
        return False
    return not (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


def _failure(name: str, exc: Exception) -> OutputFailure:
    if isinstance(exc, ImageRejected):
        return OutputFailure(name, str(exc), final=True)
    # Without server paths or stack details, as worker.consumer describes an error.
    described = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return OutputFailure(name, described, final=False)


def temp_paths(folders: Folders, processing: Processing) -> list[Path]:
    """A fresh temporary file name in PROCESSED_DIR for each output."""
    return [folders.temp_processed_path() for _ in processing.outputs]
