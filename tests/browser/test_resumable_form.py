"""The upload form sends big files resumable (api/static/resumable.js, tus at /files/) and carries on
after a dropped connection: headless Chromium, the real API and a real worker. The threshold and
piece size are lowered on the page so a file under the suite's MAX_UPLOAD_BYTES goes in pieces."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import images
from tests.browser.test_web_ui import (  # noqa: F401 (fixtures)
    PROCESSED_WITHIN_MS,
    Page,
    Traffic,
    Worker,
    browser,
    drop_files,
    expect,
    page,
    screenshots,
    traffic,
    worker,
)

PIECE_BYTES = 100 * 1024


@pytest.fixture
def pieces_page(page: Page) -> Iterator[Page]:  # noqa: F811
    page.goto("/")
    page.evaluate(
        f"""() => {{
            const form = document.getElementById("upload-form");
            form.dataset.resumableFrom = "100000";
            form.dataset.resumablePiece = "{PIECE_BYTES}";
        }}"""
    )
    yield page


def noisy_png(width: int, height: int) -> bytes:
    return images.encode(Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)), "PNG")


def test_a_big_file_resumes_after_its_connection_drops_and_goes_to_done(
    pieces_page: Page,
    traffic: Traffic,  # noqa: F811
    worker: Worker,  # noqa: F811
    api_process: str,
    screenshots: Path,  # noqa: F811
) -> None:
    worker.ensure_running()
    data = noisy_png(500, 400)
    assert 4 * PIECE_BYTES < len(data) < 1_000_000 and len(data) % PIECE_BYTES
    patches: list[str] = []

    def drop_the_third(route, request) -> None:
        if request.method != "PATCH":
            route.continue_()
            return
        patches.append(request.headers.get("upload-offset", ""))
        if len(patches) == 3:
            route.abort("connectionreset")
        else:
            route.continue_()

    pieces_page.route("**/files/*", drop_the_third)
    drop_files(pieces_page, "#upload-form", [("static.png", data, "image/png")])

    line = pieces_page.locator("#upload-list li")
    expect(line).to_have_attribute("data-status", "done", timeout=PROCESSED_WITHIN_MS)
    expect(line.locator("progress")).to_have_attribute("value", "100")
    assert patches[2] == patches[3] == str(2 * PIECE_BYTES), (
        "the dropped piece was sent again from its offset"
    )
    assert len(patches) == len(data) // PIECE_BYTES + 2, "one extra PATCH: the dropped one"
    task_id = int(line.get_attribute("data-task-id") or 0)
    original = httpx.get(f"{api_process}/tasks/{task_id}/original", timeout=30)
    assert hashlib.sha256(original.content).digest() == hashlib.sha256(data).digest()
    status = httpx.get(f"{api_process}/status/{task_id}", timeout=30).json()
    assert status["filename"] == "static.png"
    pieces_page.screenshot(path=screenshots / "resumable-upload.png", full_page=True)


def test_a_small_file_still_goes_as_one_form_post(
    pieces_page: Page,
    traffic: Traffic,  # noqa: F811
) -> None:
    drop_files(pieces_page, "#upload-form", [("small.jpg", images.jpeg(64, 48), "image/jpeg")])
    expect(pieces_page.locator("#upload-list li")).to_have_attribute("data-task-id", re.compile(r"^\d+$"))
    assert not any("/files/" in url for url in traffic.requested)
    assert any(url.endswith("/upload") for url in traffic.requested)


def test_a_refused_big_file_says_why_on_its_line(
    pieces_page: Page,
    traffic: Traffic,  # noqa: F811
) -> None:
    drop_files(pieces_page, "#upload-form", [("notes.png", b"not an image" * 20_000, "image/png")])
    expect(pieces_page.locator("#upload-list li")).to_have_attribute("data-status", "refused")
    expect(pieces_page.locator("#upload-list li .error")).to_contain_text("Refused: ")
    assert [answer.split()[0] for answer in traffic.refused] == ["415"]
    traffic.refused.clear()
