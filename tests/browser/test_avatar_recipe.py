"""Issue 15's "done when", in a real browser: a user uploads an iPhone HEIC, a P3 AVIF and a CMYK TIFF
from the form, asks for `avatar` (the README's recipe: a square crop by smart gravity, 512 × 512, the
operator's logo), sees each placeholder before its result, and gets sRGB outputs, checked by pixels.

The API and the worker of this module are started as the README tells an operator to: a logo in
WATERMARK_IMAGES and an `avatar` entry in PRESETS replacing the built-in one. The preset is the
README's recipe read from the README itself, with one test-only addition in front: passes of an
unsharp mask whose threshold no pixel difference passes (so they change nothing, as the checks by
pixels confirm) that keep the worker busy for a moment after its decode, as the blurs of
test_web_ui.py's placeholder tests do. Without them a render takes some 50 ms and its placeholder
is recorded with the result (worker.consumer: PLACEHOLDER_WRITE_DELAY_SECONDS).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from devstack.stack import PROJECT_ROOT, running_api, worker_process
from tests import input_formats
from tests.browser.test_web_ui import CHROMIUM, CHROMIUM_ARGS, PROCESSED_WITHIN_MS, on_console
from tests.images import encode

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
Browser, Page = sync_api.Browser, sync_api.Page
expect = sync_api.expect

# The scene: a flat backdrop and, in its right sixth, a subject (an ellipse with detail) with a red
# square at its centre; a centred square crop (x 720-1680) would miss it whole.
SCENE = (2400, 960)
SUBJECT = (1840, 240, 2240, 720)
RED_SQUARE = (1990, 430, 2090, 530)
LOGO_GREEN = (0, 200, 0)
SRGB_RED = (255, 0, 0)
# The press profile's magenta and yellow inks together, in sRGB (tests/input_formats.py: _INKS).
PRESS_RED = (230, 0, 0)
# Each pass costs about 0.1 s here on the 2400 × 960 picture: the page is caught between the
# placeholder and the result, and the render stays far below HEAVY_RENDER_PIXELS (a child process
# could not report its placeholder while it renders).
UNCHANGING_PASSES = [{"op": "sharpen", "radius": 50, "percent": 500, "threshold": 255}] * 14


def readme_recipe() -> dict[str, Any]:
    """The `avatar` preset as the README's recipe writes it (its TOML block)."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    found = re.search(r"```toml\n(\[PRESETS\.avatar\]\n.*?)```", readme, re.DOTALL)
    assert found, "the README shows the avatar recipe as TOML"
    return tomllib.loads(found.group(1))["PRESETS"]["avatar"]


@pytest.fixture(scope="module")
def logo_file(workdir: Path) -> Path:
    path = workdir / "recipe-logo.png"
    Image.new("RGBA", (60, 30), (*LOGO_GREEN, 255)).save(path)
    return path


@pytest.fixture(scope="module")
def recipe_env(stack_env: dict[str, str], logo_file: Path) -> dict[str, str]:
    recipe = readme_recipe()
    avatar = {"description": recipe["description"], "ops": UNCHANGING_PASSES + recipe["ops"]}
    return {
        **stack_env,
        "WATERMARK_IMAGES": "@json " + json.dumps({"logo": str(logo_file)}),
        "PRESETS": "@json " + json.dumps({"avatar": avatar}),
    }


@pytest.fixture(scope="module")
def recipe_api(recipe_env: dict[str, str], workdir: Path) -> Iterator[str]:
    with running_api(recipe_env, log_file=workdir / "recipe-api.log") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def recipe_worker(recipe_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    with worker_process(recipe_env, log_file=workdir / "recipe-worker.log") as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


Colour = tuple[int, ...]


def scene(backdrop: Colour, skin: Colour, detail: Colour, red: Colour, mode: str) -> Image.Image:
    """The scene in `mode` (RGB or CMYK) with these colours, as the picture is displayed."""
    image = Image.new(mode, SCENE, backdrop)
    draw = ImageDraw.Draw(image)
    draw.ellipse(SUBJECT, fill=skin)
    left, top, right, _ = SUBJECT
    for step in range(12):
        y = top + 60 + step * 30
        draw.line((left + 60, y, right - 60, y + 10), fill=detail, width=4)
    draw.rectangle((RED_SQUARE[0], RED_SQUARE[1], RED_SQUARE[2] - 1, RED_SQUARE[3] - 1), fill=red)
    return image


def iphone_heic() -> bytes:
    """As an iPhone stores a photo: HEIC, Display P3, turned a quarter with EXIF orientation 6."""
    picture = scene((120, 140, 160), (224, 172, 140), (90, 50, 40), input_formats.P3_OF_SRGB_RED, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90° clockwise to display": stored turned counter-clockwise
    stored = picture.transpose(Image.Transpose.ROTATE_90)
    return input_formats.heic(stored, exif=exif.tobytes(), icc_profile=input_formats.display_p3_profile())


def p3_avif() -> bytes:
    picture = scene((120, 140, 160), (224, 172, 140), (90, 50, 40), input_formats.P3_OF_SRGB_RED, "RGB")
    return input_formats.avif(picture, icc_profile=input_formats.display_p3_profile())


def cmyk_tiff() -> bytes:
    picture = scene((60, 30, 0, 40), (0, 70, 90, 0), (0, 80, 90, 160), (0, 255, 255, 0), "CMYK")
    return encode(picture, "TIFF", compression="tiff_lzw", icc_profile=input_formats.cmyk_press_profile())


# What each result page went through, recorded in the page from its first parse: a "placeholder"
# entry when the drawn placeholder shows with no result yet, a "result" one when the result shows.
RECORD_PAGE = """(() => {
    window.seen = [];
    const look = () => {
        const status = document.getElementById("status");
        if (!status) return;
        const preview = document.getElementById("placeholder-preview");
        const image = document.getElementById("processed-image");
        const box = document.getElementById("processed-placeholder");
        const drawn = preview && !preview.hidden && preview.width;
        const state = image ? "result" : drawn ? "placeholder" : "waiting";
        if (window.seen.at(-1)?.state === state) return;
        window.seen.push({
            state,
            status: status.textContent.trim(),
            ratio: box ? box.clientWidth / box.clientHeight : null,
        });
    };
    new MutationObserver(look).observe(document, { subtree: true, childList: true, attributes: true });
    document.addEventListener("DOMContentLoaded", look);
})();"""


def near(pixel: tuple[int, ...], wanted: tuple[int, int, int], tolerance: int) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], wanted, strict=True))


def mean(image: Image.Image, centre: tuple[int, int], half: int = 4) -> tuple[int, int, int]:
    x, y = centre
    area = list(image.crop((x - half, y - half, x + half + 1, y + half + 1)).get_flattened_data())
    return tuple(round(sum(pixel[channel] for pixel in area) / len(area)) for channel in range(3))  # type: ignore[return-value]


def bbox_of(
    image: Image.Image, colour: tuple[int, int, int], tolerance: int
) -> tuple[int, int, int, int] | None:
    mask = Image.new("L", image.size)
    mask.putdata([255 if near(pixel, colour, tolerance) else 0 for pixel in image.get_flattened_data()])
    return mask.getbbox()


def assert_avatar(image: Image.Image, red: tuple[int, int, int], name: str) -> None:
    assert image.size == (512, 512), name
    # The subject's red square, 100 px in a 960 px crop: about 53 px, whole and inside the output,
    # so the crop went to the subject on the right (a centred one holds none of it).
    found = bbox_of(image, red, 40)
    assert found is not None, f"{name}: no red at all (the crop missed the subject)"
    left, top, right, bottom = found
    assert 48 <= right - left <= 58 and 48 <= bottom - top <= 58, f"{name}: red square {found}"
    assert left > 40 and right < 472, f"{name}: the subject is inside the crop, not cut: {found}"
    centre = ((left + right) // 2, (top + bottom) // 2)
    # sRGB red where the input had P3 red (the press's red for the CMYK scan), not the dull one
    # a picture shown without its profile would give.
    assert near(mean(image, centre), red, 12), f"{name}: {mean(image, centre)} at {centre}, not {red}"
    # The logo: 0.25 of the width (128 × 64) at the bottom right, a fortieth of 512 from the edges.
    logo = bbox_of(image, LOGO_GREEN, 40)
    assert logo is not None, f"{name}: no logo"
    assert all(abs(a - b) <= 3 for a, b in zip(logo, (372, 436, 500, 500), strict=True)), (
        f"{name}: logo {logo}"
    )
    assert near(mean(image, (436, 468)), LOGO_GREEN, 10), name


def test_avatar_with_smart_gravity_and_a_logo_from_the_form(
    browser: Browser, recipe_api: str, recipe_worker: subprocess.Popen
) -> None:
    uploads = {
        "IMG_4021.HEIC": (iphone_heic(), "image/heic", SRGB_RED),
        "poster.avif": (p3_avif(), "image/avif", SRGB_RED),
        "scan.tif": (cmyk_tiff(), "image/tiff", PRESS_RED),
    }
    problems: list[str] = []
    form_context = browser.new_context(base_url=recipe_api)
    page = form_context.new_page()
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: on_console(message, problems))
    result_contexts = []
    try:
        page.goto("/")
        page.get_by_label("Processing").select_option("avatar")
        page.set_input_files(
            "#file",
            files=[
                {"name": name, "mimeType": kind, "buffer": data} for name, (data, kind, _) in uploads.items()
            ],
        )
        page.get_by_role("button", name="Upload").click()

        # Each result page opened as soon as its link shows, each in a context of its own (a
        # browser opens at most 6 connections to one server, and every page holds an event stream).
        results: dict[str, tuple[int, Page]] = {}
        for name in uploads:
            line = page.locator("#upload-list li", has_text=name)
            link = line.get_by_role("link", name="Result page")
            expect(link).to_be_visible(timeout=PROCESSED_WITHIN_MS)
            href = link.get_attribute("href")
            assert href is not None and re.fullmatch(r"/result/\d+", href), href
            context = browser.new_context(base_url=recipe_api)
            result_contexts.append(context)
            context.add_init_script(RECORD_PAGE)
            tab = context.new_page()
            tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            tab.goto(href)
            results[name] = (int(href.rsplit("/", 1)[1]), tab)

        for name, (task_id, tab) in results.items():
            expect(tab.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)
            expect(tab.locator("#processed-image")).to_be_visible()
            seen = tab.evaluate("() => window.seen")
            states = [entry["state"] for entry in seen]
            assert "placeholder" in states and states[-1] == "result", f"{name}: {seen}"
            shown = seen[states.index("placeholder")]
            assert shown["status"] in ("pending", "processing"), f"{name}: {seen}"
            # The placeholder has the picture's proportions as displayed (the HEIC once turned).
            assert shown["ratio"] == pytest.approx(SCENE[0] / SCENE[1], rel=0.05), f"{name}: {seen}"
            assert states.index("placeholder") < states.index("result")

            status = httpx.get(f"{recipe_api}/status/{task_id}", timeout=10).json()
            assert status["processing"][0]["preset"] == "avatar"
            output = httpx.get(f"{recipe_api}{status['processed_url']}", timeout=10)
            image = Image.open(io.BytesIO(output.content))
            assert b"Display P3" not in image.info.get("icc_profile", b""), f"{name}: sRGB, not P3"
            assert_avatar(image.convert("RGB"), uploads[name][2], name)
        for line in page.locator("#upload-list li").all():  # the form's own lines follow too
            expect(line).to_have_attribute("data-status", "done", timeout=PROCESSED_WITHIN_MS)
    finally:
        for context in result_contexts:
            context.close()
        form_context.close()
    assert not problems, problems
