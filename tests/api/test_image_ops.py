"""Issue 15's operations through the real stack: upload -> worker -> output, checked by pixels, and
each refusal at upload. The API and the worker of this module are started with WATERMARK_IMAGES
naming a logo made here, as an operator would configure them."""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.processing.forms import FOCUS_INVALID
from core.processing.operations import FOCUS_MISSING, LOSSY_FORMATS, MAX_BYTES_FLOOR_QUALITY
from devstack.stack import running_api, worker_process
from tests import images
from tests.subjects import MARK, SKIN, SUBJECT_BOX, framed, logo, off_centre_subject, sideways_with_marks
from tests.waiting import final_status
from tests.worker.rendering import WHITE, assert_all, close, colour_bbox, pixel
from worker.imaging import MAX_BYTES_UNREACHABLE


@pytest.fixture(scope="module")
def logo_file(workdir: Path) -> Path:
    path = workdir / "ops-logo.png"
    logo((40, 20)).save(path)
    return path


@pytest.fixture(scope="module")
def ops_env(stack_env: dict[str, str], logo_file: Path) -> dict[str, str]:
    return {**stack_env, "WATERMARK_IMAGES": f'@json {{"logo": "{logo_file}"}}'}


@pytest.fixture(scope="module")
def ops_api(ops_env: dict[str, str], workdir: Path) -> Iterator[str]:
    with running_api(ops_env, log_file=workdir / "ops-api.log") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def ops_worker(ops_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    with worker_process(ops_env, log_file=workdir / "ops-worker.log") as process:
        yield process


@pytest.fixture
async def ops(ops_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ops_api, timeout=30) as http:
        yield http


async def rendered(
    client: httpx.AsyncClient, content: bytes, ops: list[dict[str, Any]], **fields: str
) -> tuple[dict[str, Any], Image.Image]:
    """Upload with these ops (and other form fields), wait for the task; its status and its output."""
    created = await client.post(
        "/upload",
        files={"file": ("in.bin", content, "application/octet-stream")},
        data={"ops": json.dumps(ops), **fields},
    )
    assert created.status_code == 200, created.text
    status = await final_status(client, created.json()["task_id"])
    if status["status"] != "done":
        return status, Image.new("RGB", (1, 1))
    response = await client.get(status["processed_url"])
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return status, image


def png(image: Image.Image) -> bytes:
    return images.encode(image, "PNG")


@pytest.mark.usefixtures("ops_worker")
async def test_smart_crop_keeps_an_off_centre_subject(ops: httpx.AsyncClient) -> None:
    content = images.encode(off_centre_subject(), "JPEG", quality=92)

    _, centred = await rendered(ops, content, [{"op": "crop", "aspect": "1:1"}])
    status, smart = await rendered(ops, content, [{"op": "crop", "aspect": "1:1", "gravity": "smart"}])

    assert status["status"] == "done", status["error"]
    assert colour_bbox(centred, SKIN, 30) is None, "a centred crop misses it"
    found = colour_bbox(smart, SKIN, 30)
    assert found is not None and found[2] - found[0] >= SUBJECT_BOX[2] - SUBJECT_BOX[0] - 4, found


@pytest.mark.usefixtures("ops_worker")
async def test_focus_on_an_exif_rotated_photo(ops: httpx.AsyncClient) -> None:
    content = sideways_with_marks((600, 1200), {"wanted": (150, 1000), "other": (450, 150)})
    ops_list = [{"op": "resize", "width": 300, "height": 300, "mode": "fill", "gravity": "focus"}]

    status, out = await rendered(ops, content, ops_list, focus="0.25,0.83")

    assert status["status"] == "done", status["error"]
    assert status["focus"] == [0.25, 0.83], "the status shows the point the task was given"
    assert out.size == (300, 300)
    found = colour_bbox(out, MARK, 60)
    # The 600 × 600 cut starts at y 600 (as low as it goes): the wanted mark, 130-170 × 980-1020
    # as displayed, is at 65-85 × 190-210 once halved; the other one is cut away.
    assert found is not None and all(
        abs(a - b) <= 3 for a, b in zip(found, (65, 190, 85, 210), strict=True)
    ), found


@pytest.mark.usefixtures("ops_worker")
async def test_pad_edges(ops: httpx.AsyncClient) -> None:
    content = png(Image.new("RGB", (400, 200), (255, 0, 0)))

    status, out = await rendered(ops, content, [{"op": "resize", "width": 300, "height": 300, "mode": "pad"}])
    _, framed_out = await rendered(
        ops,
        content,
        [{"op": "pad", "margin": 12, "background": "#0000ff"}, {"op": "format", "format": "jpeg"}],
    )

    assert status["status"] == "done", status["error"]
    assert out.size == (300, 300) and out.getchannel("A").getbbox() == (0, 75, 300, 225), (
        "transparent in a PNG"
    )
    assert framed_out.size == (424, 224)
    assert close(pixel(framed_out, (5, 100)), (0, 0, 255), 8) and close(
        pixel(framed_out, (200, 100)), (255, 0, 0), 8
    )


@pytest.mark.usefixtures("ops_worker")
async def test_trim_bounds(ops: httpx.AsyncClient) -> None:
    content = png(framed((300, 200), (40, 30, 140, 90), WHITE))

    status, out = await rendered(ops, content, [{"op": "trim", "threshold": 10}])

    assert status["status"] == "done", status["error"]
    assert out.size == (100, 60) and status["outputs"][0]["width"] == 100
    assert_all(out.convert("RGB"), (0, 0, 0), 0)


@pytest.mark.usefixtures("ops_worker")
async def test_overlay_position_and_opacity(ops: httpx.AsyncClient) -> None:
    content = png(Image.new("RGB", (200, 100), WHITE))
    ops_list = [{"op": "overlay", "image": "logo", "position": "bottom-right", "margin": 5, "opacity": 0.5}]

    status, out = await rendered(ops, content, ops_list)

    assert status["status"] == "done", status["error"]
    half = tuple(round(255 + (value - 255) * 0.5) for value in MARK)
    assert colour_bbox(out, half, 2) == (155, 75, 195, 95)
    assert pixel(out, (10, 10)) == WHITE


@pytest.mark.usefixtures("ops_worker")
async def test_max_bytes_is_respected_and_its_failure_says_the_smallest_size(ops: httpx.AsyncClient) -> None:
    content = images.encode(off_centre_subject(), "PNG")

    status, _ = await rendered(ops, content, [{"op": "format", "format": "jpeg", "max_bytes": 20_000}])
    failed, _ = await rendered(ops, content, [{"op": "format", "format": "jpeg", "max_bytes": 500}])

    assert status["status"] == "done", status["error"]
    assert status["outputs"][0]["size_bytes"] <= 20_000
    assert failed["status"] == "failed" and failed["attempts"] == 1, "no retry makes it smaller"
    head = MAX_BYTES_UNREACHABLE.split("; ")[0].format(
        name="image", format="JPEG", max_bytes=500, ceiling=90, floor=MAX_BYTES_FLOOR_QUALITY
    )
    assert re.fullmatch(
        re.escape(head) + r"; the smallest it reached was [\d,]+ bytes, at quality \d+\.", failed["error"]
    )


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        (
            {"ops": '[{"op": "crop", "aspect": "1:1", "gravity": "focus"}]'},
            FOCUS_MISSING.format(field="ops", index=0),
        ),
        ({"ops": '[{"op": "grayscale"}]', "focus": "0.5"}, FOCUS_INVALID),
        ({"ops": '[{"op": "grayscale"}]', "focus": "2,0.5"}, FOCUS_INVALID),
        (
            {"ops": '[{"op": "overlay", "image": "seal"}]'},
            "`ops[0].image`: unknown watermark image 'seal'; configured: logo.",
        ),
        (
            {"ops": '[{"op": "format", "format": "png", "max_bytes": 5000}]'},
            f"`ops`: [0]: `max_bytes` needs a lossy format: {', '.join(LOSSY_FORMATS)}",
        ),
        (
            {"ops": '[{"op": "resize", "width": 10, "gravity": "smart"}]'},
            '`ops`: [0]: resize `gravity` applies to mode "fill" only',
        ),
        (
            {"ops": '[{"op": "trim", "threshold": 300}]'},
            "`ops`: [0].threshold: Input should be less than or equal to 255",
        ),
        (
            {"ops": '[{"op": "pad", "margin": 5, "background": "sunset"}]'},
            "`ops`: [0].background: 'sunset' is not a colour: use a CSS name, #rrggbb or #rrggbbaa",
        ),
        (
            {"ops": '[{"op": "overlay", "image": "logo", "scale": 3}]'},
            "`ops`: [0].scale: Input should be less than or equal to 1",
        ),
        (
            {"outputs": json.dumps({"a": [{"op": "crop", "aspect": "2:1", "gravity": "focus"}]})},
            FOCUS_MISSING.format(field="outputs.a", index=0),
        ),
    ],
)
async def test_each_refusal_at_upload(ops: httpx.AsyncClient, fields: dict[str, str], detail: str) -> None:
    response = await ops.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")}, data=fields)

    assert response.status_code == 422, response.text
    assert response.json() == {"detail": detail}
