"""Choosing the processing at upload (`preset`, `ops`, `outputs`), through the real API and worker."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.routes.tasks import FORM_FIELDS, IDEMPOTENCY_KEY_REUSED
from core.processing.presets import BUILTIN_PRESETS
from tests import images
from tests.waiting import final_status


async def upload(
    client: httpx.AsyncClient, data: dict[str, str], content: bytes | None = None
) -> httpx.Response:
    return await client.post(
        "/upload", files={"file": ("photo.jpg", content or images.jpeg(800, 600), "image/jpeg")}, data=data
    )


async def fetch_image(client: httpx.AsyncClient, url: str) -> tuple[Image.Image, httpx.Response]:
    response = await client.get(url)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)), response


async def test_presets_are_listed_with_what_they_do(client: httpx.AsyncClient) -> None:
    response = await client.get("/presets")

    assert response.status_code == 200
    listed = {item["name"]: item for item in response.json()}
    assert set(listed) == set(BUILTIN_PRESETS)
    assert listed["thumbnail"]["ops"] == [
        {"op": "resize", "width": 256, "height": 256, "mode": "fit", "enlarge": False}
    ]
    assert "256" in listed["thumbnail"]["description"]


async def test_a_preset_is_applied_and_shown_by_status(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    created = await upload(client, {"preset": "thumbnail"})
    assert created.status_code == 200, created.text

    status = await final_status(client, created.json()["task_id"])

    assert status["status"] == "done", status["error"]
    assert status["processing"][0]["preset"] == "thumbnail"
    (output,) = status["outputs"]
    assert output["url"] == status["processed_url"]
    assert (output["width"], output["height"], output["content_type"]) == (256, 192, "image/jpeg")
    image, served = await fetch_image(client, output["url"])
    assert (image.format, image.size) == ("JPEG", (256, 192))
    assert int(served.headers["content-length"]) == output["size_bytes"]


async def test_several_outputs_from_one_upload(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    outputs = {
        "thumb": "thumbnail",
        "large": "web",
        "grey": [{"op": "grayscale"}, {"op": "format", "format": "png"}],
        "square": [{"op": "crop", "aspect": "1:1"}, {"op": "format", "format": "webp", "quality": 60}],
    }
    created = await upload(client, {"outputs": json.dumps(outputs)}, images.jpeg(2400, 1600))
    assert created.status_code == 200, created.text

    status = await final_status(client, created.json()["task_id"])

    assert status["status"] == "done", status["error"]
    by_name = {output["name"]: output for output in status["outputs"]}
    assert list(by_name) == list(outputs), "outputs keep the order they were asked in"
    assert status["processed_url"] == by_name["thumb"]["url"]
    expected = {
        "thumb": ("JPEG", (256, 171), "RGB"),
        "large": ("JPEG", (1920, 1280), "RGB"),
        "grey": ("PNG", (2400, 1600), "L"),
        "square": ("WEBP", (1600, 1600), "RGB"),
    }
    for name, (fmt, size, mode) in expected.items():
        image, served = await fetch_image(client, by_name[name]["url"])
        assert (image.format, image.size, image.mode) == (fmt, size, mode), name
        assert served.headers["content-type"] == by_name[name]["content_type"]
    assert len({output["url"] for output in status["outputs"]}) == 4
    page = (await client.get(f"/result/{status['task_id']}")).text
    assert "thumb: preset thumbnail; large: preset web; grey: grayscale, format; square: crop, format" in page
    for name, output in by_name.items():
        assert f'<a href="{output["url"]}" download>{name}</a>' in page


async def test_an_ops_list_is_applied_in_order(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    ops = [{"op": "rotate", "degrees": 90}, {"op": "resize", "width": 300}, {"op": "format", "format": "png"}]
    created = await upload(client, {"ops": json.dumps(ops)})

    status = await final_status(client, created.json()["task_id"])

    assert status["status"] == "done", status["error"]
    assert status["processing"] == [{"name": "image", "preset": None, "ops": [
        {"op": "rotate", "degrees": 90.0},
        {"op": "resize", "width": 300, "mode": "fit", "enlarge": False},
        {"op": "format", "format": "png"},
    ]}]  # fmt: skip
    image, _ = await fetch_image(client, status["processed_url"])
    assert (image.format, image.size) == ("PNG", (300, 400))  # 800×600 turned to 600×800, then fitted


async def test_a_crop_outside_the_picture_fails_the_task_in_words(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    ops = [{"op": "crop", "left": 700, "top": 0, "width": 200, "height": 100}]
    created = await upload(client, {"ops": json.dumps(ops)})

    status = await final_status(client, created.json()["task_id"])

    assert status["status"] == "failed"
    assert status["error"] == (
        "The crop box (700, 0, 900, 100) lies outside the picture, which is 800×600 pixels at that step."
    )
    assert status["attempts"] == 1, "a request that cannot work is not retried"


async def test_deleting_a_task_removes_every_output(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, processed_dir: Path
) -> None:
    created = await upload(client, {"outputs": json.dumps({"a": "thumbnail", "b": "grayscale"})})
    status = await final_status(client, created.json()["task_id"])
    files = [processed_dir / output["url"].rsplit("/", 1)[1] for output in status["outputs"]]
    assert all(path.is_file() for path in files)

    assert (await client.delete(f"/tasks/{status['task_id']}")).status_code == 204

    assert [path for path in files if path.exists()] == []
    for output in status["outputs"]:
        assert (await client.get(output["url"])).status_code == 404


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (
            {"preset": "poster"},
            "`preset`: unknown preset 'poster'; "
            "choose one of default, thumbnail, web, avatar, grayscale, webp.",
        ),
        (
            {"ops": '[{"op": "zoom"}]'},
            "`ops`: [0]: unknown op; allowed: "
            "resize, crop, rotate, flip, grayscale, blur, sharpen, watermark, trim, pad, overlay, format",
        ),
        (
            {"ops": '[{"op": "flip", "direction": "sideways"}]'},
            "`ops`: [0].direction: must be one of 'horizontal' or 'vertical'",
        ),
        (
            {"ops": '[{"op": "resize", "width": 0}]'},
            "`ops`: [0].width: Input should be greater than or equal to 1",
        ),
        ({"ops": "resize please"}, "`ops` is not valid JSON."),
        (
            {"outputs": '{"small": "thumbnail", "odd": [{"op": "blur", "radius": -1}]}'},
            "`outputs.odd`: [0].radius: Input should be greater than 0",
        ),
        (
            {"outputs": '{"../etc": "thumbnail"}'},
            "`outputs`: '../etc' is not a usable output name (1-32 letters, digits, - and _).",
        ),
        (
            {"preset": "web", "ops": '[{"op": "grayscale"}]'},
            "Send only one of `preset`, `ops` and `outputs` (got preset and ops).",
        ),
        (
            {"presets": "web"},
            # The list of fields is FORM_FIELDS' (a new field joins it there).
            "Unknown form field 'presets' (did you mean 'preset'?); "
            f"the fields are: {', '.join(FORM_FIELDS)}.",
        ),
        (
            {"ops": '[{"op": "resize", "width": 10000, "height": 10000, "mode": "exact"}]'},
            "`ops`: [0] resize makes 10,000×10,000 pixels; "
            "the limit is 50,000,000 pixels (MAX_OUTPUT_PIXELS).",
        ),
    ],
)
async def test_bad_processing_is_refused_naming_the_field(
    client: httpx.AsyncClient, uploads_dir: Path, data: dict[str, str], detail: str
) -> None:
    before = set(uploads_dir.iterdir())

    response = await upload(client, data)

    assert response.status_code == 422
    assert response.json() == {"detail": detail}
    assert set(uploads_dir.iterdir()) == before, "a refused upload leaves nothing behind"


async def test_an_idempotency_key_reused_with_other_processing_is_refused(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "processing-differs-1"}
    content = images.jpeg(320, 240)
    first = await client.post(
        "/upload", files={"file": ("a.jpg", content, "image/jpeg")}, data={"preset": "web"}, headers=headers
    )
    again = await client.post(
        "/upload", files={"file": ("a.jpg", content, "image/jpeg")}, data={"preset": "web"}, headers=headers
    )
    other = await client.post(
        "/upload", files={"file": ("a.jpg", content, "image/jpeg")}, data={"preset": "webp"}, headers=headers
    )

    assert first.status_code == again.status_code == 200
    assert again.json()["task_id"] == first.json()["task_id"]
    assert other.status_code == 422
    assert other.json() == {"detail": IDEMPOTENCY_KEY_REUSED}
