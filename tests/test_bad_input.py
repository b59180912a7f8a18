"""The bad-input corpus, end to end: each awkward image goes through the real API and a real worker
process, and gets its defined answer: the upload's status and, once accepted, the task's final
status and `error` as `/status/{id}` reports them, polled with a deadline.

Every image is made here with Pillow. The test settings (tests/conftest.py) cap animations at
MAX_FRAMES=50 and images at MAX_IMAGE_PIXELS=40,000,000.
"""

from __future__ import annotations

import io
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import ExifTags, Image

from core.formats import DAMAGED_MESSAGE, more_frames_than_message, too_many_pixels_message
from devstack.stack import start_worker, stop_process
from tests import images
from tests.conftest import TEST_SETTINGS
from tests.waiting import final_status

MAX_FRAMES = int(TEST_SETTINGS["MAX_FRAMES"])
MAX_IMAGE_PIXELS = int(TEST_SETTINGS["MAX_IMAGE_PIXELS"])
GPS_INFO = 0x8825


@pytest.fixture(scope="module")
def worker(stack_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    log_file = workdir / "bad-input-worker.log"
    process = start_worker(stack_env, log_file=log_file)
    yield process
    assert stop_process(process) == 0, log_file.read_text(errors="replace")[-3000:]


async def upload(client: httpx.AsyncClient, name: str, data: bytes) -> httpx.Response:
    return await client.post("/upload", files={"file": (name, data, "application/octet-stream")})


async def accepted_task(client: httpx.AsyncClient, name: str, data: bytes) -> int:
    response = await upload(client, name, data)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def processed_image(client: httpx.AsyncClient, status: dict) -> Image.Image:
    assert status["status"] == "done", status["error"]
    assert status["error"] is None
    served = await client.get(status["processed_url"])
    assert served.status_code == 200
    return Image.open(io.BytesIO(served.content))


async def process(client: httpx.AsyncClient, name: str, data: bytes) -> dict:
    return await final_status(client, await accepted_task(client, name, data))


# Animations


def gif_with_frames(count: int, size: tuple[int, int] = (2, 2)) -> bytes:
    # Alternating colours: Pillow merges identical consecutive frames when it saves a GIF.
    frames = [Image.new("P", size, index % 2) for index in range(count)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 255, 255])
    return images.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20, loop=0)


async def test_a_gif_of_2000_frames_is_refused_at_upload_naming_the_limit(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    data = gif_with_frames(2000)
    assert Image.open(io.BytesIO(data)).n_frames == 2000  # the input really has them all
    stored_before = set(uploads_dir.iterdir())

    response = await upload(client, "flipbook.gif", data)

    # The API counts the frames at upload, stopping one past the limit (core.image_structure), so
    # such a file never becomes a task, and the count costs no more than the limit.
    assert response.status_code == 422
    assert response.json()["detail"] == more_frames_than_message(MAX_FRAMES)
    assert response.json()["detail"] == "Animation has more than 50 frames; the limit is 50."
    assert set(uploads_dir.iterdir()) == stored_before


# Shapes


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1), (1, 1)], ids=["1x4000", "4000x1", "1x1"])
async def test_extreme_shapes_are_processed_at_their_own_size(
    client: httpx.AsyncClient, worker: subprocess.Popen, size: tuple[int, int]
) -> None:
    status = await process(client, "shape.png", images.png(*size))

    output = await processed_image(client, status)
    assert (output.format, output.size) == ("PNG", size)


# Damaged data


async def test_a_truncated_jpeg_fails_as_damaged(client: httpx.AsyncClient, worker: subprocess.Popen) -> None:
    status = await process(client, "cut.jpg", images.truncated_jpeg())

    assert status["status"] == "failed"
    assert status["error"] == DAMAGED_MESSAGE


def jpeg_with_scrambled_scan() -> bytes:
    """A JPEG whose entropy-coded data has 64 bytes overwritten mid-scan with noise (no 0xFF, so no
    marker appears: the data is wrong, not the structure)."""
    data = bytearray(images.jpeg(320, 240))
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    noise = bytes(byte if byte != 0xFF else 0x7F for byte in random.Random(1234).randbytes(64))
    data[middle : middle + len(noise)] = noise
    return bytes(data)


async def test_a_jpeg_with_noise_in_its_scan_data_is_processed_as_decoded(
    client: httpx.AsyncClient, worker: subprocess.Popen
) -> None:
    # What happens: libjpeg decodes the noise as (wrong) coefficients, warns about nothing fatal and
    # returns a full picture, visibly garbled below the damage; the worker stamps and writes it. A
    # scan with marker bytes in it is refused instead (tests/worker/test_imaging.py).
    status = await process(client, "noisy.jpg", jpeg_with_scrambled_scan())

    output = await processed_image(client, status)
    assert (output.format, output.size) == ("JPEG", (320, 240))


async def test_a_header_claiming_30000_by_30000_is_refused_at_upload(client: httpx.AsyncClient) -> None:
    response = await upload(client, "bomb.png", images.png_claiming(30000, 30000))

    assert response.status_code == 422
    assert response.json()["detail"] == too_many_pixels_message(900_000_000, MAX_IMAGE_PIXELS)


# Unusual modes


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (96, 64), 0)
    image.putpalette([255, 255, 255, 0, 0, 200, 0, 150, 0])
    image.paste(1, (48, 32, 96, 64))
    return images.encode(image, "PNG", transparency=1)


def la_png() -> bytes:
    grey = Image.linear_gradient("L").resize((96, 64))
    return images.encode(Image.merge("LA", (grey, grey.point(lambda value: 255 - value))), "PNG")


MODES: dict[str, tuple[bytes, str, str]] = {
    "16-bit grey PNG": (images.encode(Image.new("I;16", (96, 64), 0x8000), "PNG"), "I;16", "PNG"),
    "palette PNG with transparency": (palette_png_with_transparency(), "P", "PNG"),
    "CMYK JPEG": (images.encode(Image.new("CMYK", (96, 64), (0, 0, 255, 0)), "JPEG"), "CMYK", "JPEG"),
    "LA PNG": (la_png(), "LA", "PNG"),
    "1-bit BMP": (images.encode(Image.new("1", (96, 64), 1), "BMP"), "1", "BMP"),
}


@pytest.mark.parametrize(("data", "mode", "fmt"), MODES.values(), ids=MODES.keys())
async def test_unusual_modes_come_back_in_their_own_format(
    client: httpx.AsyncClient, worker: subprocess.Popen, data: bytes, mode: str, fmt: str
) -> None:
    assert Image.open(io.BytesIO(data)).mode == mode  # the input really is in that mode

    status = await process(client, "mode.bin", data)

    output = await processed_image(client, status)
    assert (output.format, output.size) == (fmt, (96, 64))


# Metadata


async def test_exif_orientation_6_comes_back_upright_with_width_and_height_swapped(
    client: httpx.AsyncClient, worker: subprocess.Popen
) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90° clockwise to display"
    data = images.jpeg(320, 240, exif=exif)

    status = await process(client, "portrait.jpg", data)

    output = await processed_image(client, status)
    assert output.size == (240, 320)
    assert ExifTags.Base.Orientation not in output.getexif()


async def test_gps_exif_never_reaches_the_output(client: httpx.AsyncClient, worker: subprocess.Popen) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "CameraMaker"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 22.0, 1.0),
    }
    data = images.jpeg(320, 240, exif=exif)
    assert GPS_INFO in Image.open(io.BytesIO(data)).getexif()  # the input really carries GPS

    status = await process(client, "holiday.jpg", data)

    output = await processed_image(client, status)
    assert GPS_INFO not in output.getexif()


# File names


@pytest.mark.parametrize(
    ("sent", "shown_escaped"),
    [
        # The last path segment is kept ("</script>" holds a slash): "script>.png".
        ("<script>alert(1)</script>.png", "script&gt;.png"),
        ("<script>alert(1).png", "&lt;script&gt;alert(1).png"),
    ],
)
async def test_a_hostile_file_name_is_shown_escaped_on_the_result_page(
    client: httpx.AsyncClient, worker: subprocess.Popen, sent: str, shown_escaped: str
) -> None:
    task_id = await accepted_task(client, sent, images.png(32, 24))
    await final_status(client, task_id)

    page = await client.get(f"/result/{task_id}")

    assert page.status_code == 200
    assert f"<h1>{shown_escaped}</h1>" in page.text
    # The page's one script is its own file; no other script tag comes from the name.
    assert page.text.count("<script") == page.text.count('<script type="module" src="/static/') == 1
