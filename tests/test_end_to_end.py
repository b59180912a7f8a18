"""The whole system as users run it: the API and worker processes, PostgreSQL and NATS JetStream."""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import images
from tests.waiting import final_status


async def test_a_photo_uploaded_from_the_form_shows_up_processed_on_its_result_page(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, heartbeat_file: Path, workdir: Path
) -> None:
    form = await client.get("/")
    assert 'name="file"' in form.text

    posted = await client.post(
        "/upload",
        files={"file": ("IMG_0001.JPG", images.jpeg(1024, 768), "image/jpeg")},
        headers={"Accept": "text/html"},
    )
    assert posted.status_code == 303
    result_url = posted.headers["location"]
    task_id = int(result_url.rsplit("/", 1)[1])

    status = await final_status(client, task_id)
    assert status["status"] == "done", status["error"]

    page = (await client.get(result_url)).text
    assert f'<img src="{status["processed_url"]}"' in page
    assert 'http-equiv="refresh"' not in page, "a finished task's page stops refreshing"
    served = await client.get(status["processed_url"])
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["x-content-type-options"] == "nosniff"
    output = Image.open(io.BytesIO(served.content))
    assert (output.format, output.size) == ("JPEG", (1024, 768))
    assert images.red_share(output, (0, 0, 512, 120)) > 0.01
    assert images.red_share(output, (512, 384, 1024, 768)) == 0
    assert time.time() - heartbeat_file.stat().st_mtime < 10, "the worker reports itself alive"
    assert f"[task={task_id}]: task {task_id} done" in (workdir / "worker.log").read_text(), (
        "log has the task"
    )


def rgba_png() -> bytes:
    image = Image.new("RGBA", (300, 200), (0, 128, 0, 0))
    image.paste((0, 128, 0, 255), (150, 100, 300, 200))
    return images.encode(image, "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("P", (120, 90), color) for color in (1, 2, 3)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 0, 0, 255, 0, 255, 0, 255, 255, 0] + [0] * 744)
    return images.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def cmyk_jpeg() -> bytes:
    return images.encode(Image.new("CMYK", (320, 240), (0, 0, 255, 0)), "JPEG", quality=90)


@pytest.mark.parametrize(
    ("name", "data", "content_type", "frames"),
    [
        ("alpha.png", rgba_png(), "image/png", 1),
        ("anim.gif", animated_gif(), "image/gif", 3),
        ("print.jpg", cmyk_jpeg(), "image/jpeg", 1),
        ("web.webp", images.encode(images.photo(200, 150), "WEBP"), "image/webp", 1),
    ],
)
async def test_every_accepted_format_comes_back_in_its_own_format(
    client: httpx.AsyncClient,
    worker_process: subprocess.Popen,
    name: str,
    data: bytes,
    content_type: str,
    frames: int,
) -> None:
    task_id = (await client.post("/upload", files={"file": (name, data, "image/png")})).json()["task_id"]

    status = await final_status(client, task_id)

    assert status["status"] == "done", status["error"]
    served = await client.get(status["processed_url"])
    assert served.headers["content-type"] == content_type
    output = Image.open(io.BytesIO(served.content))
    assert getattr(output, "n_frames", 1) == frames
    assert images.red_share(output, (0, 0, output.width // 2, output.height // 4)) > 0
