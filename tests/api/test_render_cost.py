"""Cost bombs through the real API and a real worker: outputs whose steps or frames would cost the
worker far more than their final size says are refused at upload naming the step, and a row that
bypasses the API is failed by the worker at its first attempt, before it costs memory."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.image_structure import JPEG_TOO_MANY_SCANS
from core.models import ImageTask
from core.processing.cost import STEP_TOO_LARGE, STEP_TOO_LARGE_IN_ALL, TEXT_TOO_LARGE
from core.processing.forms import resolve
from core.processing.presets import BUILTIN_PRESETS
from devstack.stack import start_worker, stop_process
from tests import images
from tests.waiting import final_status
from worker.imaging import OUTPUT_TOO_COSTLY

LIMIT = 50_000_000  # MAX_OUTPUT_PIXELS's default, which the test stack keeps
# The 71-byte PNG of the report: enlarged to 16,384 × 16,384, then shrunk back.
ENLARGE_AND_BACK = [
    {"op": "resize", "width": 16384, "height": 16384, "mode": "exact"},
    {"op": "resize", "width": 64, "height": 64, "mode": "exact"},
]
BOMB_REFUSED = (
    "`ops`: [0] resize makes 16,384×16,384 pixels; the limit is 50,000,000 pixels (MAX_OUTPUT_PIXELS)."
)
ROTATION_REFUSED = (
    "`outputs.turned`: [0] rotate makes 8,486×8,486 pixels; the limit is 50,000,000 pixels "
    "(MAX_OUTPUT_PIXELS)."
)
FRAMES_REFUSED = (
    "`ops`: [0] resize makes 1,100×1,100 pixels in each of 50 frames (60,500,000 pixels in all); "
    "the limit is 50,000,000 pixels in all (MAX_OUTPUT_PIXELS)."
)
TEXT_REFUSED = (
    "`ops`: [0] watermark: 200 characters at 1,000 px make a text image of up to 252,054,000 pixels; "
    "the limit is 50,000,000 pixels (MAX_OUTPUT_PIXELS)."
)


def tiny_png() -> bytes:
    data = images.encode(Image.new("L", (1, 1)), "PNG")
    assert len(data) < 80
    return data


async def upload(client: httpx.AsyncClient, content: bytes, **fields: Any) -> httpx.Response:
    data = {name: value if isinstance(value, str) else json.dumps(value) for name, value in fields.items()}
    return await client.post(
        "/upload", files={"file": ("upload", content, "application/octet-stream")}, data=data
    )


def animation(frames: int) -> bytes:
    pictures = [Image.new("L", (1, 1), 255 * (index % 2)) for index in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "GIF", save_all=True, append_images=pictures[1:], duration=40)
    return buffer.getvalue()


async def test_the_71_byte_png_bomb_is_refused_at_upload_naming_the_step(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    before = set(uploads_dir.iterdir())

    response = await upload(client, tiny_png(), ops=ENLARGE_AND_BACK)

    assert response.status_code == 422
    assert response.json() == {"detail": BOMB_REFUSED}
    assert (
        "`ops`: " + STEP_TOO_LARGE.format(index=0, op="resize", width=16384, height=16384, limit=LIMIT)
        == BOMB_REFUSED
    )
    assert set(uploads_dir.iterdir()) == before


async def test_a_rotation_that_grows_past_the_limit_is_refused_naming_the_output(
    client: httpx.AsyncClient,
) -> None:
    # 6,000 × 6,000 is within MAX_IMAGE_PIXELS; turned 45° its canvas is not.
    picture = images.encode(Image.new("L", (6000, 6000)), "PNG")

    response = await upload(
        client, picture, outputs={"small": "thumbnail", "turned": [{"op": "rotate", "degrees": 45}]}
    )

    assert response.status_code == 422
    assert response.json() == {"detail": ROTATION_REFUSED}


async def test_every_frame_of_an_animation_counts(client: httpx.AsyncClient) -> None:
    enlarge = {"op": "resize", "width": 1100, "height": 1100, "mode": "exact"}

    refused = await upload(client, animation(50), ops=[enlarge])
    # A JPEG keeps the first frame only: 1.21 MP.
    accepted = await upload(client, animation(50), ops=[enlarge, {"op": "format", "format": "jpeg"}])

    assert refused.status_code == 422
    assert refused.json() == {"detail": FRAMES_REFUSED}
    assert (
        "`ops`: "
        + STEP_TOO_LARGE_IN_ALL.format(
            index=0, op="resize", width=1100, height=1100, frames=50, total=60_500_000, limit=LIMIT
        )
        == FRAMES_REFUSED
    )
    assert accepted.status_code == 200, accepted.text


async def test_a_watermark_text_over_the_limit_is_refused_at_upload(client: httpx.AsyncClient) -> None:
    response = await upload(client, images.png(), ops=[{"op": "watermark", "text": "W" * 200, "size": 1000}])

    assert response.status_code == 422
    assert response.json() == {"detail": TEXT_REFUSED}
    assert (
        "`ops`: " + TEXT_TOO_LARGE.format(index=0, chars=200, size=1000, pixels=252_054_000, limit=LIMIT)
        == TEXT_REFUSED
    )


async def test_a_progressive_jpeg_of_too_many_scans_is_refused_in_words(client: httpx.AsyncClient) -> None:
    response = await upload(client, images.jpeg_with_scans(200, 64, 64))

    assert response.status_code == 422
    assert response.json() == {"detail": JPEG_TOO_MANY_SCANS}


@pytest.fixture
def own_worker(stack_env: dict[str, str], workdir: Path) -> Iterator[list[subprocess.Popen]]:
    """A worker started by the test when it is ready (the list holds it), stopped cleanly after."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        assert stop_process(process) == 0, (workdir / "cost-worker.log").read_text(errors="replace")[-3000:]


async def test_a_row_that_bypasses_the_api_is_failed_by_the_worker_before_it_costs_memory(
    client: httpx.AsyncClient,
    db: AsyncSession,
    stack_env: dict[str, str],
    workdir: Path,
    own_worker: list[subprocess.Popen],
) -> None:
    # Accepted with harmless ops, then the row is given the bomb (as a row written by an older API,
    # or by hand, would have it) before any worker runs.
    created = await upload(client, tiny_png(), ops=[ENLARGE_AND_BACK[1]])
    assert created.status_code == 200, created.text
    task_id = created.json()["task_id"]
    bomb = resolve(
        preset=None,
        ops=json.dumps(ENLARGE_AND_BACK),
        outputs=None,
        presets=BUILTIN_PRESETS,
        watermark_text="x",
    )
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(processing=bomb.to_json()))
    await db.commit()
    worker = start_worker(stack_env, log_file=workdir / "cost-worker.log")
    own_worker.append(worker)

    status = await final_status(client, task_id)

    assert status["status"] == "failed"
    assert status["attempts"] == 1, "no retry can make it cheaper"
    assert status["error"] == OUTPUT_TOO_COSTLY.format(
        name="image", reason=BOMB_REFUSED.removeprefix("`ops`: ")
    )
    peak_mib = int(Path(f"/proc/{worker.pid}/status").read_text().split("VmHWM:")[1].split()[0]) // 1024
    assert peak_mib < 400, "the worker never made the 16,384 × 16,384 step (over 1 GB)"
