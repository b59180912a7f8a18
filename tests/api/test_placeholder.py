"""The placeholder through the real API and worker: in /status (its hash shows the picture's
colours and shape, its size the displayed one), as an event of the task's stream that comes while
the outputs are still being made and before the final status, and in the webhook body."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from tests import images
from tests.api.test_callbacks import (  # noqa: F401 (receiver: the fixture)
    Receiver,
    callback_state,
    receiver,
    upload_with_callback,
    verify,
)
from tests.sse import Event, EventReader
from tests.thumbhash_decoding import aspect_ratio, decode
from tests.waiting import final_status
from tests.worker.rendering import sideways_jpeg

# Each Gaussian blur of a 3000 × 3000 picture takes about 0.35 s of a core here: the outputs are
# seconds behind the decode, which the stream (a poll every 0.3 s) cannot miss.
SLOW_OPS = [{"op": "blur", "radius": 100}] * 6
# Past HEAVY_RENDER_PIXELS (100 MP of estimated work): rendered in a child process of its own,
# which reports the placeholder through its pipe.
HEAVY_OPS = [{"op": "blur", "radius": 100}] * 12


def jpeg_of(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, **options)
    return out.getvalue()


async def upload(client: httpx.AsyncClient, content: bytes, **data: str) -> int:
    response = await client.post("/upload", files={"file": ("picture.jpg", content, "image/jpeg")}, data=data)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


async def test_status_shows_the_placeholder_of_the_picture(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    picture = Image.new("RGB", (800, 400), (220, 30, 40))
    picture.paste((20, 60, 230), (400, 0, 800, 400))
    task_id = await upload(client, jpeg_of(picture), preset="thumbnail")

    status = await final_status(client, task_id)

    assert status["status"] == "done", status["error"]
    placeholder = status["placeholder"]
    assert set(placeholder) == {"thumbhash", "dominant_color", "width", "height"}
    assert (placeholder["width"], placeholder["height"]) == (800, 400)
    assert 1.5 < aspect_ratio(base64.b64decode(placeholder["thumbhash"])) < 2.5
    shown = decode(placeholder["thumbhash"]).convert("RGB")
    left, right = shown.getpixel((2, shown.height // 2)), shown.getpixel((shown.width - 3, shown.height // 2))
    assert left[0] > 150 and left[2] < 100, f"the left half shows red: {left}"
    assert right[2] > 150 and right[0] < 100, f"the right half shows blue: {right}"


async def test_the_dominant_colour_of_a_mostly_one_colour_picture(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    picture = Image.new("RGB", (640, 480), (30, 140, 70))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((40, 40, 200, 120), fill=(250, 250, 250))
    draw.text((300, 300), "imagequeue", fill=(0, 0, 0))
    task_id = await upload(client, jpeg_of(picture), preset="thumbnail")

    status = await final_status(client, task_id)

    colour = rgb(status["placeholder"]["dominant_color"])
    assert all(abs(a - b) <= 10 for a, b in zip(colour, (30, 140, 70), strict=True)), colour


async def test_an_exif_rotated_jpeg_gives_its_displayed_size_and_look(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, tmp_path: Path
) -> None:
    # Stored 1200 × 800 with the left half green; orientation 6 shows it 800 × 1200, green on top.
    content = sideways_jpeg(tmp_path / "sideways.jpg").read_bytes()
    task_id = await upload(client, content, preset="thumbnail")

    status = await final_status(client, task_id)

    placeholder = status["placeholder"]
    assert (placeholder["width"], placeholder["height"]) == (800, 1200)
    shown = decode(placeholder["thumbhash"]).convert("RGB")
    assert shown.height > shown.width
    top, bottom = shown.getpixel((shown.width // 2, 2)), shown.getpixel((shown.width // 2, shown.height - 3))
    assert top[1] > top[2] and bottom[2] > bottom[1], f"green on top, blue below: {top}, {bottom}"


async def all_events(client: httpx.AsyncClient, task_id: int) -> list[Event]:
    events: list[Event] = []
    async with client.stream("GET", f"/tasks/{task_id}/events") as response:
        assert response.status_code == 200
        reader = EventReader(response)
        while (event := await reader.next(timeout=60)) is not None:
            events.append(event)
    return events


@pytest.mark.parametrize("ops", [SLOW_OPS, HEAVY_OPS], ids=["in-the-pool", "heavy-in-its-own-process"])
async def test_the_placeholder_event_comes_while_processing_before_the_final_status(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, ops: list[dict]
) -> None:
    task_id = await upload(client, images.jpeg(3000, 3000), ops=json.dumps(ops))

    events = await all_events(client, task_id)

    kinds = [event.event for event in events]
    assert kinds.count("placeholder") == 1, kinds
    at = kinds.index("placeholder")
    final = events[-1]
    assert final.event == "status" and final.json()["status"] == "done", final.data
    assert at < len(events) - 1, "the placeholder comes before the final status"
    after = events[at + 1]
    assert after.event == "status" and after.json()["status"] == "processing", (
        "recorded while the outputs were still being made"
    )
    assert events[at].json() == after.json()["placeholder"] == final.json()["placeholder"]
    assert [event.id for event in events] == [str(n) for n in range(1, len(events) + 1)]
    assert events[at].json()["width"] == 3000


async def test_the_webhook_body_carries_the_placeholder(
    client: httpx.AsyncClient,
    worker_process: subprocess.Popen,
    receiver: Receiver,  # noqa: F811
) -> None:
    task_id = await upload_with_callback(client, receiver.url, images.jpeg(640, 480))

    status = await final_status(client, task_id)

    await callback_state(client, task_id, "delivered")
    (delivery,) = receiver.received
    body = verify(delivery)
    assert body["placeholder"] == status["placeholder"]
    assert (body["placeholder"]["width"], body["placeholder"]["height"]) == (640, 480)
