"""Render a task's outputs from one input file: all of the worker's decoding and encoding.

One decode serves every output. A JPEG that every output shrinks a lot is decoded at a reduced
scale (`draft()`: libjpeg skips most of the DCT work), then each output runs its operations
(worker.operations) on the decoded frames and is encoded to its own file.

Failures split in two on purpose. Anything wrong with the input or the request (undecodable
data, too many frames or pixels, a crop outside the picture) raises `ImageRejected`, whose message
is shown to the person who uploaded it and which no retry can fix. An `OSError` while writing an
output (disk full, permissions) or reading the input off a failing disk propagates untouched: it
is transient and worth a retry.

Outputs are fresh images: only the pixels, the ICC profile (when it still describes them) and the
animation timing are carried over, so EXIF (GPS, camera owner), XMP, comments and text chunks never
leave the worker, unless `keep_metadata` asks to keep the EXIF block (its orientation reset, since
it has been applied).

No global state is touched (no `warnings` filters, no `Image.MAX_IMAGE_PIXELS`, no
`ImageFile.LOAD_TRUNCATED_IMAGES`): the worker renders from several threads at once.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from PIL import ExifTags, Image, ImageCms

from core.formats import DAMAGED_MESSAGE, ImageRejected, check_animation, default_output_format, open_image
from core.processing.cost import ANIMATED_OUTPUT_FORMATS, cost_refusal, output_frames
from core.processing.operations import (
    MAX_BYTES_ENCODES,
    MAX_BYTES_FLOOR_QUALITY,
    Blur,
    Crop,
    Flip,
    Format,
    Grayscale,
    Overlay,
    Pad,
    Resize,
    Rotate,
    Sharpen,
    Trim,
    Watermark,
)
from core.processing.outputs import Output
from core.processing.sizes import crop_box, fitted_size, output_size, resized_size
from core.tracing import step
from worker import gravity, operations
from worker.gravity import Focus
from worker.heif import enable_heif
from worker.overlays import load_watermark
from worker.placeholder import Placeholder, make_placeholder

OUTSIDE_MESSAGE = "A frame of the animation lies far outside the picture and cannot be decoded."
ENCODING_FAILED = "The result could not be written as {format} ({reason})."
TOO_LARGE_FOR_FORMAT = (
    "The result is {width:,}×{height:,} pixels; {format} holds at most {limit:,} pixels a side."
)
OUTPUT_TOO_COSTLY = "Output {name!r}: {reason}"
STEP_TOO_LARGE = (
    "Output {name!r}: [{index}] {op} would make an image of {pixels:,} pixels; the limit is {limit:,} pixels."
)
STEP_FAILED = "Output {name!r}: [{index}] {op} cannot be done on this picture ({reason})."
WATERMARK_IMAGE_GONE = (
    "Output {name!r}: [{index}] overlay: the watermark image {image!r} is not configured on this worker "
    "(WATERMARK_IMAGES)."
)
MAX_BYTES_UNREACHABLE = (
    "Output {name!r}: the {format} is over max_bytes ({max_bytes:,} bytes) at every quality tried "
    "between {ceiling} and {floor}; the smallest it reached was {size:,} bytes, at quality {quality}."
)
# Pillow's DecompressionBombError/Warning: "Image size (N pixels) exceeds limit of M pixels".
_PILLOW_SIZES = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")


@dataclass(frozen=True)
class ProcessedImage:
    format: str
    width: int
    height: int
    frames: int
    size_bytes: int


@dataclass(frozen=True)
class OutputFailed:
    """An output that could not be made, in place of its ProcessedImage (render's `keep_going`)."""

    error: Exception


@dataclass(frozen=True)
class RenderLimits:
    max_pixels: int
    max_frames: int
    max_output_pixels: int


@dataclass(frozen=True)
class EncoderSettings:
    """Effort/size trade-offs of the slow encoders (see README: "Output formats")."""

    webp_method: int = 0
    avif_speed: int = 8
    keep_metadata: bool = False
    # Off (the default): every output is sRGB, converted through the input's ICC profile (see
    # _colour_plan). On: profiles are carried over as they are, and CMYK stays CMYK where it can.
    keep_icc_profiles: bool = False


# ICC header bytes 16-20 name the profile's colour space; a profile is only kept when it describes
# the pixels written (a GRAY profile on an image we turned RGB would be wrong).
_ICC_SPACE = {"RGB": b"RGB ", "RGBA": b"RGB ", "CMYK": b"CMYK", "L": b"GRAY", "LA": b"GRAY"}
# Largest ICC profile copied into outputs: Pillow's own cap on a PNG's (its iCCP chunk), so every
# input format is held to the same. Display and camera profiles weigh a few KB, press profiles up to
# about a megabyte; a JPEG may carry 16 MB, which every output (a 64×48 thumbnail too) would repeat.
# A larger profile is applied instead (the pixels converted to sRGB, which viewers assume) and
# dropped; one LittleCMS cannot use is dropped as it is.
MAX_ICC_PROFILE_BYTES = 1024 * 1024

# Modes whose pixels a non-sRGB profile is converted from (LittleCMS has no grey with alpha, and a
# grey profile's pixels are grey in sRGB too, so grey keeps its profile).
_CONVERTED_MODES = ("RGB", "RGBA", "CMYK")
# Inputs decoded as one picture whatever their container holds: an MPO's first image, a TIFF's first
# page (its pages were counted at upload), a HEIF's primary image.
_SINGLE_PICTURE = ("MPO", "TIFF", "HEIF")

# ImageOps.exif_transpose decides per image from that image's own metadata; an animation needs one
# decision applied to every frame, so the orientation is read once and mapped here.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {5, 6, 7, 8}

_FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
# Modes each encoder writes; anything else is converted (see _encodable).
_ENCODER_MODES = {
    "JPEG": ("RGB", "L", "CMYK"),
    "PNG": ("RGB", "RGBA", "L", "LA"),
    "WEBP": ("RGB", "RGBA"),
    "AVIF": ("RGB", "RGBA"),
    "GIF": ("RGB", "RGBA", "L"),
    "BMP": ("RGB", "RGBA", "L"),
}
# The longest side each encoder writes (libjpeg's JPEG_MAX_DIMENSION, WebP's 14-bit and AV1's 16-bit
# sizes, GIF's 16-bit fields). Past it they fail without saying why ("broken data stream").
_MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383, "AVIF": 65_536, "GIF": 65_535}
# WebP 80 (Pillow's own default): on a 24 MP photo, 90 made a file 2.3× larger.
_DEFAULT_QUALITY = {"JPEG": 90, "WEBP": 80, "AVIF": 75}
# libwebp's "partition 0 overflow": the fast methods (0, 1) cannot fit the headers of a large, busy
# picture at high quality into the format's 512 KB first partition; the slower ones pack them tighter.
_WEBP_PARTITION_OVERFLOW = "encoding error 6"
_WEBP_FALLBACK_METHODS = (2, 4, 6)

# Below this font size the strokes are about a pixel wide, and halving the colour resolution (JPEG
# 4:2:0, lossy WebP) turns a red stamp into a muddy purple. Such stamps are on small pictures,
# where the sharper encodings (JPEG 4:4:4, lossless WebP) cost little.
_SMALL_TEXT = 24
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (draft(): libjpeg scales in the DCT, skipping most
# of the work) when every output's first resize allows it, keeping at least this multiple of the
# largest target size for the LANCZOS pass that follows. 1.0 keeps the decoded image at or above the
# target: the DCT scaling is an area average, so the result stays sharp (tests/worker compare it
# with a full decode), and the `web` preset on a 12 MP photo decodes at half size.
_DRAFT_GAP = 1.0
# Operations that change only the geometry: a grey conversion commutes with them.
_GEOMETRY = (Resize, Crop, Rotate, Flip)
# The output formats that keep transparency: where `pad` extends with transparent pixels, not white.
_ALPHA_FORMATS = ("PNG", "WEBP", "AVIF", "GIF")


def render(
    src: Path,
    outputs: Sequence[tuple[Output, Path]],
    *,
    limits: RenderLimits,
    encoder: EncoderSettings | None = None,
    focus: tuple[float, float] | None = None,
    watermark_images: Mapping[str, Path] | None = None,
    report: Callable[[Placeholder], None] | None = None,
    keep_going: Callable[[Exception], bool] | None = None,
) -> list[ProcessedImage | OutputFailed]:
    """Write each output's rendering of `src` to exactly its path (which needs no extension).

    An output that fails with an error `keep_going` accepts is given as OutputFailed, and the
    next one is rendered; any other error (and every error without `keep_going`) ends the render.

    `focus`: the upload's focus point (fractions of the picture as displayed); `watermark_images`:
    the files `overlay` ops name (WATERMARK_IMAGES). `report`, when given, receives the picture's
    placeholder (worker.placeholder) once it is decoded and before any output is made, taken from
    that same decode (a JPEG's draft included), in sRGB. If writing fails, partly written files may
    remain; the caller owns them.
    """
    encoder = encoder or EncoderSettings()
    context = _Context(focus=Focus(*focus) if focus else None, watermark_images=watermark_images or {})
    enable_heif()
    # Rendered while the file is open: a still image's frame is the decoded image itself, which
    # closing it would free.
    with open_image(src, limits.max_pixels) as image:
        with step("decode"):
            source = _decode(
                image, [output for output, _ in outputs], limits, keep_icc=encoder.keep_icc_profiles
            )
        if report is not None:
            colour = _placeholder_colour(source) if encoder.keep_icc_profiles else None
            report(
                make_placeholder(
                    source.frames[0],
                    *source.full_size,
                    colour=colour or (lambda small: _in_srgb(source, small)),
                )
            )
        results: list[ProcessedImage | OutputFailed] = []
        for index, (output, dst) in enumerate(outputs):
            try:
                # Checked again here (the API did, before queueing): only now is the orientation known.
                frames = output_frames(output, source.format, len(source.frames))
                refused = cost_refusal(output, *source.full_size, frames, limit=limits.max_output_pixels)
                if refused:
                    raise ImageRejected(OUTPUT_TOO_COSTLY.format(name=output.name, reason=refused))
                # The last output may draw on the decoded frames themselves: nobody needs them afterwards.
                last = index == len(outputs) - 1
                results.append(_render_output(source, output, dst, encoder, context, owns_frames=last))
            except Exception as exc:
                if keep_going is None or not keep_going(exc):
                    raise
                results.append(OutputFailed(exc))
    return results


@dataclass(frozen=True)
class _Context:
    """What the operations may need beyond the frame: the upload's focus point and the watermark files."""

    focus: Focus | None
    watermark_images: Mapping[str, Path]


def watermark(src: Path, dst: Path, *, text: str, max_pixels: int, max_frames: int) -> ProcessedImage:
    """The `default` preset on one file: `text` in red at the top left, same size and format."""
    output = Output(name="image", ops=(Watermark(op="watermark", text=text),), preset="default")
    limits = RenderLimits(max_pixels=max_pixels, max_frames=max_frames, max_output_pixels=max_pixels)
    result = render(src, [(output, dst)], limits=limits)[0]
    assert isinstance(result, ProcessedImage)  # without keep_going, a failure raises
    return result


@dataclass
class _Source:
    """The decoded input, oriented, in one of the modes operations accept."""

    format: str
    frames: list[Image.Image]
    durations: list[float]
    animation: dict[str, Any]
    icc_profile: bytes | None
    exif: Image.Exif | None
    # The oriented size before any draft() reduction: what the requested sizes refer to.
    full_size: tuple[int, int] = (0, 0)
    # How frames become sRGB (_colour_plan), applied by each output after its leading geometry
    # steps: a thumbnail converts 50 thousand pixels, not the 12 million decoded.
    to_srgb: ImageCms.ImageCmsTransform | None = None
    cmyk_to_rgb: bool = False


def _decode(image: Image.Image, outputs: list[Output], limits: RenderLimits, *, keep_icc: bool) -> _Source:
    input_format = "JPEG" if image.format == "MPO" else str(image.format)
    with _decoding():
        frame_count = 1 if image.format in _SINGLE_PICTURE else getattr(image, "n_frames", 1)
    screen = image.size
    check_animation(frame_count, *screen, max_frames=limits.max_frames, max_pixels=limits.max_pixels)

    transpose: int | None = None
    if input_format == "JPEG":
        # A JPEG's EXIF comes before its pixels: read the orientation first, to size the draft.
        transpose = _orientation(image)
        oriented = screen[::-1] if transpose in _SWAPS_SIDES else screen
        fraction = min(1.0, max(_needed_fraction(output.ops, *oriented) for output in outputs) * _DRAFT_GAP)
        # Every output turns grey before any colour matters: decode the luma channel only (JPEG's
        # Y is the same ITU-R 601 luma that convert("L") computes), skipping chroma and colour
        # conversion.
        grey = image.mode == "RGB" and all(_turns_grey_first(output.ops) for output in outputs)
        if fraction < 1 or grey:
            wanted = (max(1, math.ceil(screen[0] * fraction)), max(1, math.ceil(screen[1] * fraction)))
            image.draft("L" if grey else None, wanted)

    source = _Source(format=input_format, frames=[], durations=[], animation={}, icc_profile=None, exif=None)
    for index in range(frame_count):
        with _decoding():
            if frame_count > 1:
                image.seek(index)
            image.load()
        if index == 0:
            if transpose is None:
                # Read after the first load: a PNG's eXIf chunk may follow the pixel data.
                transpose = _orientation(image)
            source.animation = _animation_options(image)
            source.icc_profile, source.to_srgb, source.cmyk_to_rgb = _colour_plan(
                image.info.get("icc_profile"), _normalised_mode(image), keep_icc=keep_icc
            )
            source.exif = _exif(image)
        source.durations.append(image.info.get("duration", 0))
        # An animation's frames must be copies (the next seek reuses the image); a still image
        # is used in place when its mode allows.
        frame = _normalised(image, copy=frame_count > 1)
        if frame.size != screen and frame_count > 1:
            # A GIF frame placed beyond the logical screen makes Pillow grow the canvas;
            # browsers clip to the screen, and the encoders need frames of one size.
            frame = frame.crop((0, 0, *screen))
        if transpose:
            frame = frame.transpose(_ORIENTATION_TRANSPOSE[transpose])
        # Some encoders fall back on `info`: the input's comment, or an APNG's disposal and
        # blend, which describe its partial frames, not the full frames written here.
        frame.info = {}
        source.frames.append(frame)
    source.full_size = screen[::-1] if transpose in _SWAPS_SIDES else screen
    return source


def _needed_fraction(ops: Sequence[Any], width: int, height: int) -> float:
    """How much of the full resolution this output needs: the scale of its first resize, when only
    operations that do not care about scale come before it; 1 otherwise."""
    for op in ops:
        if isinstance(op, Resize):
            new_w, new_h = (
                fitted_size(op, width, height) if op.mode == "pad" else resized_size(op, width, height)
            )
            return min(1.0, max(new_w / width, new_h / height))
        if isinstance(op, Crop) and op.aspect is not None:
            left, top, right, bottom = crop_box(op, width, height)
            width, height = right - left, bottom - top
        elif isinstance(op, Rotate) and op.degrees % 90 == 0:
            if op.degrees % 180:
                width, height = height, width
        elif not isinstance(op, Flip | Grayscale):
            return 1.0
    return 1.0


def _turns_grey_first(ops: Sequence[Any]) -> bool:
    for op in ops:
        if isinstance(op, Grayscale):
            return True
        if not isinstance(op, _GEOMETRY):
            return False
    return False


def _render_output(
    source: _Source,
    output: Output,
    dst: Path,
    encoder: EncoderSettings,
    context: _Context,
    *,
    owns_frames: bool,
) -> ProcessedImage:
    chosen = output.format()
    if chosen:
        output_format = _FORMAT_NAMES[chosen.format]
    else:
        has_alpha = source.frames[0].mode in ("RGBA", "LA")
        output_format = default_output_format(source.format, has_alpha=has_alpha)
    animated = len(source.frames) > 1 and output_format in ANIMATED_OUTPUT_FORMATS
    frames_in = source.frames if animated else source.frames[:1]
    steps = _Steps(context, transparent=output_format in _ALPHA_FORMATS, name=output.name)
    frames: list[Image.Image] = []
    # Traced (core.tracing): every op of the first frame; an animation's ops over all its frames.
    with step("ops", imagequeue__output=output.name, imagequeue__frames=len(frames_in)):
        for frame_index, frame in enumerate(frames_in):
            owned = False
            # The size the frame stands for. A draft-decoded frame is smaller, and its rounded-up size
            # has a slightly different aspect: a resize must aim at the size output_size promised.
            size = source.full_size
            steps.focus = context.focus
            srgb = False
            for index, op in enumerate(output.ops):
                if not srgb and not _keeps_colours(op):
                    # Colour matters from here on (a stamp's red, a pad's background, a grey
                    # conversion): sRGB first.
                    converted, srgb = _in_srgb(source, frame, in_place=owned or owns_frames), True
                    owned, frame = owned or converted is not frame, converted
                before = frame
                with (
                    _applying(output.name, index, op),
                    _op_step(output.name, index, op, first=frame_index == 0),
                ):
                    frame = steps.apply(frame, index, op, size, owned=owned or owns_frames)
                # A trim's size depends on the pixels (and no draft decode comes before one).
                size = frame.size if isinstance(op, Trim) else output_size((op,), *size)
                owned = owned or frame is not before
            if not srgb:
                frame = _in_srgb(source, frame, in_place=owned or owns_frames)
            frames.append(_encodable(frame, output_format))
    smallest_text = steps.smallest_text

    options: dict[str, Any] = {"format": output_format, **_encoder_options(output_format, chosen, encoder)}
    small_text = smallest_text is not None and smallest_text < _SMALL_TEXT
    if output_format == "JPEG" and frames[0].mode == "RGB":
        # Never for CMYK: libjpeg would subsample three channels against cyan, blurring black.
        options["subsampling"] = "4:4:4" if small_text else "4:2:0"
    if output_format == "WEBP" and small_text and chosen is None:
        options["lossless"] = True
    profile = source.icc_profile
    if profile and profile[16:20] == _ICC_SPACE.get(frames[0].mode):
        options["icc_profile"] = profile
    if encoder.keep_metadata and source.exif is not None and output_format in ("JPEG", "PNG", "WEBP", "AVIF"):
        options["exif"] = source.exif.tobytes()
    if len(frames) > 1:
        durations = source.durations
        if source.animation.get("default_image"):
            durations = durations[1:]  # an APNG's default image is not an animation frame
        if output_format == "AVIF":
            # An APNG's durations are fractions of a millisecond (floats); the AVIF encoder takes ints.
            durations = [round(duration) for duration in durations]
        animation = _animation_for(source.animation, output_format)
        options.update(animation, save_all=True, append_images=frames[1:], duration=durations)
        if output_format == "GIF" and any(_has_transparent_pixels(frame) for frame in frames):
            # Restore-to-background before each frame: otherwise a pixel that turns transparent
            # keeps showing the previous frame through it.
            options["disposal"] = 2
    with step("encode", imagequeue__output=output.name, imagequeue__format=output_format):
        if chosen is not None and chosen.max_bytes is not None:
            _save_within(frames[0], dst, options, chosen.max_bytes, output.name)
        else:
            _save(frames[0], dst, options)
    return ProcessedImage(
        format=output_format,
        width=frames[0].width,
        height=frames[0].height,
        frames=len(frames),
        size_bytes=dst.stat().st_size,
    )


def _keeps_colours(op: Any) -> bool:
    """Whether `op` only moves or drops pixels (so it may run before the conversion to sRGB, on
    fewer pixels): not one that paints a colour given in sRGB, or changes colours."""
    if isinstance(op, Resize):
        return op.mode != "pad"
    return isinstance(op, (Crop, Rotate, Flip, Trim, Format))


def _in_srgb(source: _Source, frame: Image.Image, *, in_place: bool = False) -> Image.Image:
    """`frame` converted as source's _colour_plan says (a new image), or itself. `in_place`: the
    caller owns `frame`, which may then be converted where it is (when the transform keeps its mode)."""
    transform = source.to_srgb
    if transform is not None:
        if in_place and not frame.readonly and transform.input_mode == transform.output_mode == frame.mode:
            # A 12 MP Display P3 photo: 20 ms less of the conversion's ~160, and no second 48 MB
            # frame (applyTransform's new image is zeroed, then Pillow copies its unused fourth
            # byte pixel by pixel). Not on a read-only frame: that one maps the input file.
            transform.apply_in_place(frame)
            frame.info = {}
            return frame
        converted = ImageCms.applyTransform(frame, transform) or frame
        # ImageCms labels its result with the sRGB profile, which encoders would write: the output
        # is untagged, as before (viewers assume sRGB).
        converted.info = {}
        return converted
    if source.cmyk_to_rgb:
        return frame.convert("RGB")
    return frame


# The operations that only map a frame to a frame (the others need more: see _Steps).
_FRAME_OPERATIONS: dict[type, Callable[[Image.Image, Any], Image.Image]] = {
    Grayscale: operations.grayscale,
    Blur: operations.blur,
    Sharpen: operations.sharpen,
}


class _Steps:
    """One output's operations on its frames, with what they carry from one step to the next (the
    focus point, as fractions of the frame at that step) and from the first frame to the others:
    where a trim cuts and where a gravity puts its cut are decided on the first frame, so that
    every frame of an animation is cut alike."""

    def __init__(self, context: _Context, *, transparent: bool, name: str) -> None:
        self.context = context
        self.transparent = transparent
        self.name = name
        self.focus: Focus | None = context.focus
        self.smallest_text: int | None = None
        self._decided: dict[int, Any] = {}

    def apply(
        self, frame: Image.Image, index: int, op: Any, size: tuple[int, int], *, owned: bool
    ) -> Image.Image:
        if isinstance(op, Watermark):
            frame, stamp = operations.watermark(frame, op, owned=owned)
            self.smallest_text = min(stamp.font_size, self.smallest_text or stamp.font_size)
            return frame
        if isinstance(op, Resize):
            return self._resize(frame, index, op, size)
        if isinstance(op, Crop):
            offset = None
            if op.gravity is not None:
                left, top, right, bottom = crop_box(op, frame.width, frame.height)
                offset = self._placed(index, op.gravity, frame, (right - left, bottom - top))
            box = operations.placed_crop_box(frame, op, offset)
            cropped = operations.crop(frame, op, offset=offset)
            self._follow_box(box, frame.size)
            return cropped
        if isinstance(op, Trim):
            if index not in self._decided:
                self._decided[index] = operations.trim_box(frame, op)
            box = self._decided[index]
            if box is None or box == (0, 0, *frame.size):
                return frame  # nothing to cut: the frame goes on as it is
            self._follow_box(box, frame.size)
            return frame.crop(box)
        if isinstance(op, Pad):
            padded = operations.pad(frame, op, transparent=self.transparent)
            if self.focus is not None:
                self.focus = self.focus.after_padding(frame.size, (op.margin, op.margin), padded.size)
            return padded
        if isinstance(op, Overlay):
            path = self.context.watermark_images.get(op.image)
            if path is None:
                raise ImageRejected(WATERMARK_IMAGE_GONE.format(name=self.name, index=index, image=op.image))
            return operations.overlay(frame, op, load_watermark(path), owned=owned)
        if isinstance(op, Rotate):
            if self.focus is not None:
                self.focus = self.focus.after_rotation(op.degrees % 360, frame.size)
            return operations.rotate(frame, op)
        if isinstance(op, Flip):
            if self.focus is not None:
                self.focus = self.focus.after_flip(op.direction)
            return operations.flip(frame, op)
        if isinstance(op, Format):
            return frame
        return _FRAME_OPERATIONS[type(op)](frame, op)

    def _resize(self, frame: Image.Image, index: int, op: Resize, size: tuple[int, int]) -> Image.Image:
        if op.mode == "pad":
            padded, inner, at = operations.pad_to_box(frame, op, full_size=size, transparent=self.transparent)
            if self.focus is not None:
                self.focus = self.focus.after_padding(inner, at, padded.size)
            return padded
        if op.mode != "fill":
            return operations.resize(frame, op, full_size=size)
        cut = operations.fill_cut(frame, op, size)
        offset = self._placed(index, op.gravity, frame, cut)
        self._follow_box((offset[0], offset[1], offset[0] + cut[0], offset[1] + cut[1]), frame.size)
        return operations.resize(frame, op, full_size=size, offset=offset)

    def _placed(
        self, index: int, where: str | None, frame: Image.Image, cut: tuple[float, float]
    ) -> tuple[float, float]:
        if index not in self._decided:
            self._decided[index] = gravity.offset(where, frame, cut, self.focus)
        return self._decided[index]

    def _follow_box(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> None:
        if self.focus is not None:
            self.focus = self.focus.after_box(box, size)


def _save_within(first: Image.Image, dst: Path, options: dict[str, Any], max_bytes: int, name: str) -> None:
    """`format`'s `max_bytes`: the highest quality from the one asked for (or the format's default)
    down to MAX_BYTES_FLOOR_QUALITY whose file fits, by a binary search of at most MAX_BYTES_ENCODES
    encodes in memory; ImageRejected with the smallest size reached when none fits."""
    ceiling = int(options["quality"])
    floor = min(MAX_BYTES_FLOOR_QUALITY, ceiling)

    # One options dict for the whole search: a WebP method _save had to fall back to is kept for
    # the next encodes, not found again each time (which would be up to 4 encodes an encode, past
    # the MAX_BYTES_ENCODES the cost estimate counts).
    options = dict(options)

    def encoded(quality: int) -> bytes:
        buffer = io.BytesIO()
        options["quality"] = quality
        _save(first, buffer, options)
        return buffer.getvalue()

    data = encoded(ceiling)
    if len(data) <= max_bytes:
        dst.write_bytes(data)
        return
    encodes, best, smallest = 1, None, (len(data), ceiling)
    low, high = floor, ceiling - 1
    while low <= high and encodes < MAX_BYTES_ENCODES:
        middle = (low + high) // 2
        data = encoded(middle)
        encodes += 1
        if len(data) <= max_bytes:
            best, low = data, middle + 1
        else:
            smallest = min(smallest, (len(data), middle))
            high = middle - 1
    if best is None:
        size, quality = smallest
        raise ImageRejected(
            MAX_BYTES_UNREACHABLE.format(
                name=name,
                format=options["format"],
                max_bytes=max_bytes,
                ceiling=ceiling,
                floor=floor,
                size=size,
                quality=quality,
            )
        )
    dst.write_bytes(best)


def _save(first: Image.Image, dst: Path | io.BytesIO, options: dict[str, Any]) -> None:
    """Encode, with the slower WebP methods as a fallback for partition overflows. An encoder that
    refuses the picture does so every time: that is `ImageRejected`, not a fault worth retrying
    (an OSError with an errno, the disk failing, still is)."""
    limit = _MAX_SIDE.get(options["format"])
    if limit is not None and max(first.size) > limit:
        width, height = first.size
        raise ImageRejected(
            TOO_LARGE_FOR_FORMAT.format(width=width, height=height, format=options["format"], limit=limit)
        )
    methods = [options.get("method")]
    if options["format"] == "WEBP":
        methods += [method for method in _WEBP_FALLBACK_METHODS if method > (options.get("method") or 0)]
    for method in methods:
        if method is not None:
            options["method"] = method
        try:
            first.save(dst, **options)
            return
        except ValueError as exc:
            if _WEBP_PARTITION_OVERFLOW in str(exc) and method != methods[-1]:
                continue
            raise ImageRejected(ENCODING_FAILED.format(format=options["format"], reason=exc)) from exc
        except RuntimeError as exc:  # libavif's refusals ("Failed to encode image: ...")
            raise ImageRejected(ENCODING_FAILED.format(format=options["format"], reason=exc)) from exc
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise ImageRejected(ENCODING_FAILED.format(format=options["format"], reason=exc)) from exc


def _encoder_options(output_format: str, chosen: Format | None, encoder: EncoderSettings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if output_format in _DEFAULT_QUALITY:
        options["quality"] = chosen.quality if chosen and chosen.quality else _DEFAULT_QUALITY[output_format]
    if output_format == "WEBP":
        options["method"] = encoder.webp_method
    if output_format == "AVIF":
        options["speed"] = encoder.avif_speed
    return options


def _encodable(frame: Image.Image, output_format: str) -> Image.Image:
    """`frame` in a mode the encoder writes: alpha flattened on white for JPEG, CMYK made RGB for
    the formats that have no CMYK, grey made RGB where the encoder has no grey."""
    allowed = _ENCODER_MODES[output_format]
    if frame.mode in allowed:
        return frame
    if frame.mode in ("RGBA", "LA") and not any(mode in allowed for mode in ("RGBA", "LA")):
        flat = Image.new("RGB", frame.size, (255, 255, 255))
        flat.paste(frame.convert("RGBA"), mask=frame.getchannel("A"))
        return flat if frame.mode == "RGBA" else flat.convert("L")
    if frame.mode == "LA":
        return frame.convert("RGBA")
    return frame.convert("RGB")


@contextmanager
def _applying(name: str, index: int, op: Any) -> Iterator[None]:
    """Turn Pillow's refusals of an operation into `ImageRejected`: with sizes the cost check
    passed, they come from the picture and the request alone (a text image past Pillow's pixel
    guard, a size it cannot make), so every retry would fail the same way."""
    try:
        yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = _PILLOW_SIZES.search(str(exc))
        if found is None:
            raise ImageRejected(STEP_FAILED.format(name=name, index=index, op=op.op, reason=exc)) from exc
        pixels, limit = int(found[1]), int(found[2])
        raise ImageRejected(
            STEP_TOO_LARGE.format(name=name, index=index, op=op.op, pixels=pixels, limit=limit)
        ) from exc
    except (ValueError, OSError) as exc:
        # An OSError with an errno is the system failing (memory, disk): worth a retry. Without
        # one, it is Pillow or FreeType refusing (a raster overflow on a huge glyph).
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise ImageRejected(STEP_FAILED.format(name=name, index=index, op=op.op, reason=exc)) from exc


_NOT_TRACED: AbstractContextManager[None] = nullcontext()


def _op_step(name: str, index: int, op: Any, *, first: bool) -> AbstractContextManager[None]:
    """A traced step for one op of the first frame (an animation's others are in its `ops` step)."""
    if not first:
        return _NOT_TRACED
    return step(f"op {op.op}", imagequeue__output=name, imagequeue__op_index=index)


@contextmanager
def _decoding() -> Iterator[None]:
    """Turn a decoder's complaint about the input into `ImageRejected`."""
    try:
        yield
    except ImageRejected:
        raise
    except OSError as exc:
        # Pillow reports bad data as an OSError without errno ("image file is truncated", "broken
        # data stream"); one with an errno is the disk or file system failing, so it stays an OSError.
        if exc.errno is not None:
            raise
        raise ImageRejected(DAMAGED_MESSAGE) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own size guard (made an error by configure_pillow) firing after open_image's
        # check passed: only a GIF frame far beyond the logical screen, growing the canvas, does that.
        raise ImageRejected(OUTSIDE_MESSAGE) from exc
    except (
        SyntaxError,
        ValueError,
        EOFError,
        struct.error,
        zlib.error,
        IndexError,
        RuntimeError,
        ZeroDivisionError,
    ) as exc:
        # SyntaxError: broken PNG chunks; ValueError: oversized compressed text chunks; RuntimeError:
        # libavif failing a frame ("Decoding of color planes failed"); the rest escape from plugins
        # parsing malformed headers (ZeroDivisionError: an AVIF track whose timescale is 0).
        raise ImageRejected(DAMAGED_MESSAGE) from exc


def _orientation(image: Image.Image) -> int | None:
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except (SyntaxError, ValueError, struct.error, OSError):
        # A broken EXIF block spoils only the orientation, not the picture.
        return None
    return orientation if orientation in _ORIENTATION_TRANSPOSE else None


def _exif(image: Image.Image) -> Image.Exif | None:
    """The EXIF block to keep when KEEP_METADATA is on, with its orientation marked as applied."""
    try:
        exif = image.getexif()
    except (SyntaxError, ValueError, struct.error, OSError):
        return None
    if not exif:
        return None
    exif.pop(ExifTags.Base.Orientation, None)
    return exif


def _animation_options(image: Image.Image) -> dict[str, Any]:
    """Loop count, background and APNG default image of the first frame, before later frames
    overwrite `image.info`."""
    options: dict[str, Any] = {}
    # A GIF without a loop count plays once; inventing one would change how it plays.
    for key in ("loop", "background", "default_image"):
        if key in image.info:
            options[key] = image.info[key]
    return options


def _animation_for(animation: dict[str, Any], output_format: str) -> dict[str, Any]:
    options = {"loop": animation["loop"]} if "loop" in animation else {}
    # A GIF's background is a palette index into a palette the output will not have; only a WebP's
    # own (an RGBA tuple) carries over.
    if output_format == "WEBP" and isinstance(animation.get("background"), tuple):
        options["background"] = animation["background"]
    if output_format == "PNG" and animation.get("default_image"):
        # The APNG's first picture is a still shown by viewers without animation support.
        options["default_image"] = True
    return options


def _normalised(image: Image.Image, *, copy: bool) -> Image.Image:
    """`image` in a mode every operation accepts: RGB, RGBA, L, LA (keeping any transparency)
    or CMYK."""
    if image.mode.startswith("I"):
        if image.mode not in ("I", "I;16"):
            # A big- or little-endian-labelled 16-bit TIFF (I;16B, I;16L): point() has no table for it.
            image = image.convert("I")
        # 16-bit greyscale: Pillow's own conversion clips 0-65535 to 0-255 (mid-grey turns white),
        # so scale to 8 bits first.
        image = image.point(lambda value: value / 256).convert("L")
        # A tRNS grey value is in 16-bit units and would now match the wrong pixels.
        image.info.pop("transparency", None)
        copy = False
    mode = _normalised_mode(image)
    if image.mode != mode:
        return image.convert(mode)
    return image.copy() if copy else image


def _normalised_mode(image: Image.Image) -> str:
    if image.mode == "CMYK":
        return "CMYK"
    if image.mode.startswith("I") or image.mode in ("L", "LA", "1"):
        return "LA" if image.has_transparency_data else "L"
    return "RGBA" if image.has_transparency_data else "RGB"


def _colour_plan(
    profile: bytes | None, mode: str, *, keep_icc: bool
) -> tuple[bytes | None, ImageCms.ImageCmsTransform | None, bool]:
    """What becomes of a picture's colours: the profile its outputs carry, the transform to sRGB
    its frames go through (None: none), and whether CMYK frames take Pillow's own conversion.

    Web outputs are sRGB: a picture in another space (Display P3 from a phone, Adobe RGB, a press
    CMYK) is converted through its profile, and carries none afterwards (browsers take untagged
    pictures as sRGB). An sRGB profile describes the pixels as they are: kept, as before. CMYK
    without a usable profile takes Pillow's conversion. With `keep_icc` profiles are kept as given,
    except one over MAX_ICC_PROFILE_BYTES, which every output would repeat: that one is applied.
    """
    if keep_icc:
        if profile and len(profile) > MAX_ICC_PROFILE_BYTES:
            return None, _to_srgb(profile, mode), False
        return profile, None, False
    small = profile is not None and len(profile) <= MAX_ICC_PROFILE_BYTES
    srgb = profile is not None and small and profile[16:20] == b"RGB " and _is_srgb(profile)
    if mode not in _CONVERTED_MODES or srgb:
        return profile, None, False
    transform = _to_srgb(profile, mode) if profile else None
    if transform is not None:
        return None, transform, False
    if mode == "CMYK":
        return None, None, True
    # An RGB profile LittleCMS cannot read: kept if small (a viewer may read it), as before.
    return (profile if small else None), None, False


def _placeholder_colour(source: _Source) -> Callable[[Image.Image], Image.Image] | None:
    """With profiles kept (KEEP_ICC_PROFILES), how the placeholder still becomes sRGB: it is a CSS
    colour and a canvas, which no profile travels with. None: as the outputs are."""
    profile = source.icc_profile
    if profile is None or _is_srgb(profile):
        return None
    transform = _to_srgb(profile, source.frames[0].mode)
    if transform is None:
        return None
    return lambda small: ImageCms.applyTransform(small, transform) or small


def _is_srgb(profile: bytes) -> bool:
    """Whether `profile` is an sRGB profile (by its description: "sRGB IEC61966-2.1", LittleCMS's
    "sRGB built-in", ...), so converting through it would change nothing."""
    try:
        description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    except (ImageCms.PyCMSError, OSError, ValueError):
        return False
    return "srgb" in description.lower()


def _to_srgb(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A transform from `profile` to sRGB for frames in `mode`; None when LittleCMS cannot make one
    (a damaged profile, or one for other pixels than these)."""
    if profile[16:20] != _ICC_SPACE.get(mode) or mode == "LA":  # LittleCMS has no grey with alpha
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        # A profile of its own each time: LittleCMS caches what it reads in the profile, and
        # several threads render at once.
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.buildTransform(source, srgb, mode, "RGBA" if mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None


def _has_transparent_pixels(frame: Image.Image) -> bool:
    if frame.mode not in ("RGBA", "LA"):
        return False
    alpha_low, _ = cast("tuple[int, int]", frame.getextrema()[-1])
    return alpha_low < 255
