"""AVIF, HEIC and TIFF uploads through the real API and worker: each format's output checked by its
pixels, and each bomb or damaged file with its answer."""

from __future__ import annotations

import io
import subprocess

import httpx
import pytest
from PIL import Image

from core.formats import DAMAGED_MESSAGE, too_many_pages_message, too_many_pixels_message
from core.heif_structure import coded_size_message, too_many_tiles_message
from tests import input_formats
from tests.conftest import TEST_SETTINGS
from tests.waiting import final_status

MAX_PIXELS = int(TEST_SETTINGS["MAX_IMAGE_PIXELS"])
MAX_FRAMES = int(TEST_SETTINGS["MAX_FRAMES"])
RED, BLUE = (255, 0, 0), (0, 0, 255)


def layout(width: int = 640, height: int = 480) -> Image.Image:
    """Red, with a blue block at the top left: where it lands shows the orientation."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (0, 0, width // 4, height // 2))
    return image


def near(actual: object, expected: tuple[int, ...], tolerance: int = 8) -> bool:
    assert isinstance(actual, tuple)
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


async def processed(
    client: httpx.AsyncClient, name: str, data: bytes, preset: str
) -> tuple[dict[str, object], Image.Image]:
    created = await client.post(
        "/upload", files={"file": (name, data, "application/octet-stream")}, data={"preset": preset}
    )
    assert created.status_code == 200, created.text
    status = await final_status(client, created.json()["task_id"])
    assert status["status"] == "done", status["error"]
    (output,) = status["outputs"]
    response = await client.get(output["url"])
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return output, image


async def test_an_iphone_like_heic_becomes_an_upright_srgb_jpeg(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    # Shot sideways (EXIF orientation 6, written by the encoder as `irot`) in Display P3.
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = layout()
    picture.paste(input_formats.P3_OF_SRGB_RED, (160, 0, 640, 480))
    data = input_formats.heic(picture, exif=exif.tobytes(), icc_profile=input_formats.display_p3_profile())

    output, image = await processed(client, "IMG_0001.HEIC", data, "thumbnail")

    assert (output["content_type"], output["width"], output["height"]) == ("image/jpeg", 192, 256)
    assert image.format == "JPEG" and image.size == (192, 256)
    # Turned a quarter clockwise: the blue block is at the top right; the P3 red is sRGB red.
    assert near(image.getpixel((185, 10)), BLUE, 12)
    assert near(image.getpixel((40, 200)), RED, 10)


async def test_a_p3_avif_stays_avif_in_srgb(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    picture = Image.new("RGB", (320, 240), input_formats.P3_OF_SRGB_RED)
    data = input_formats.avif(picture, icc_profile=input_formats.display_p3_profile())

    output, image = await processed(client, "p3.avif", data, "thumbnail")

    assert output["content_type"] == "image/avif"
    assert near(image.convert("RGB").getpixel((100, 100)), RED, 10)


async def test_a_cmyk_tiff_becomes_an_srgb_jpeg_through_its_profile(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    scan = Image.new("CMYK", (400, 300), (0, 0, 0, 0))
    scan.paste((255, 0, 0, 0), (0, 0, 200, 300))
    data = input_formats.tiff(scan, compression="tiff_lzw", icc_profile=input_formats.cmyk_press_profile())

    output, image = await processed(client, "scan.tif", data, "web")

    assert (output["content_type"], image.mode, image.size) == ("image/jpeg", "RGB", (400, 300))
    assert near(image.getpixel((50, 150)), input_formats.PRESS_CYAN, 10)
    assert near(image.getpixel((350, 150)), (255, 255, 255), 6)


async def test_a_16_bit_greyscale_tiff_with_pages_gives_its_first_page(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    pages = [Image.new("I;16", (300, 200), 40_000), Image.new("I;16", (300, 200), 0)]
    data = input_formats.tiff(
        pages[0], save_all=True, append_images=pages[1:], compression="tiff_adobe_deflate"
    )

    output, image = await processed(client, "pages.tiff", data, "thumbnail")

    assert (output["content_type"], output["frames"]) == ("image/jpeg", 1)
    assert abs(image.getpixel((10, 10)) - 40_000 // 256) <= 3  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "data", "status", "detail"),
    [
        (
            "tiles.heic",
            input_formats.heic_grid_of_tiles(3000, tile_size=64),
            422,
            too_many_tiles_message(3000),
        ),
        (
            "huge.avif",
            input_formats.with_ispe(input_formats.avif(layout(64, 32)), 60_000, 60_000),
            422,
            too_many_pixels_message(60_000 * 60_000, MAX_PIXELS),
        ),
        (
            "liar.avif",
            input_formats.with_ispe(input_formats.avif(layout(1024, 1024), speed=10), 64, 64),
            422,
            coded_size_message((64, 64), (1024, 1024)),
        ),
        ("pages.tif", input_formats.tiff_pages(600), 422, too_many_pages_message(MAX_FRAMES)),
        ("cut.heic", input_formats.heic(layout(64, 32))[:-30], 415, DAMAGED_MESSAGE),
        ("cut.avif", input_formats.avif(layout(64, 32))[:-30], 415, DAMAGED_MESSAGE),
    ],
    ids=["heic-tiles", "avif-60000", "avif-coded-larger", "tiff-pages", "heic-cut", "avif-cut"],
)
async def test_bombs_and_damaged_files_of_the_new_formats_are_refused_at_upload(
    client: httpx.AsyncClient, name: str, data: bytes, status: int, detail: str
) -> None:
    response = await client.post("/upload", files={"file": (name, data, "application/octet-stream")})
    assert (response.status_code, response.json()["detail"]) == (status, detail)


async def test_a_heic_whose_picture_data_is_garbage_fails_with_a_reason(
    client: httpx.AsyncClient, worker_process: subprocess.Popen
) -> None:
    data = input_formats.heic(layout(256, 256))
    start = data.index(b"mdat") + 4
    created = await client.post(
        "/upload", files={"file": ("zeroed.heic", data[:start] + bytes(len(data) - start), "image/heic")}
    )
    assert created.status_code == 200, created.text

    status = await final_status(client, created.json()["task_id"])

    assert (status["status"], status["error"]) == ("failed", DAMAGED_MESSAGE)
