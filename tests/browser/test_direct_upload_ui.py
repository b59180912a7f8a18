"""The upload page on the s3 backend: a big file goes straight to the bucket (direct_upload.js),
in headless Chromium, against a real SeaweedFS, API and worker. Skipped where no Chromium is."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from devstack.stack import running_api, start_worker, stop_process
from tests.api.test_direct_uploads import forget_direct_tasks, s3_env, seaweed  # noqa: F401 (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("browser tests need Chromium: none found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
PROCESSED_WITHIN_MS = 90_000
# Above direct_upload.js's DIRECT_MIN_BYTES (8 MiB), under this API's MAX_UPLOAD_BYTES.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024


def big_png() -> bytes:
    """Noise does not compress: 1,750 × 1,750 RGB is a PNG of about 9 MB."""
    side = 1750
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


@pytest.fixture(scope="module")
def big_api(s3_env: dict[str, str], workdir: Path) -> Iterator[str]:  # noqa: F811
    env = {**s3_env, "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}
    with running_api(env, log_file=workdir / "direct-ui-api.log") as base_url:
        yield base_url
    forget_direct_tasks(s3_env["DATABASE_URL"])


@pytest.fixture(scope="module")
def big_worker(s3_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:  # noqa: F811
    log_file = workdir / "direct-ui-worker.log"
    process = start_worker({**s3_env, "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}, log_file=log_file)
    yield process
    assert stop_process(process) == 0, log_file.read_text()[-3000:]


def test_a_big_file_goes_straight_to_the_bucket(
    big_api: str,
    big_worker: subprocess.Popen,
    seaweed: object,  # noqa: F811
) -> None:
    data = big_png()
    assert len(data) > 8 * 1024 * 1024
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(base_url=big_api)
            problems: list[str] = []
            requests: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            # Refused requests are logged as "Failed to load resource": looked at through `refused`.
            page.on(
                "console",
                lambda message: (
                    message.type == "error"
                    and not message.text.startswith("Failed to load resource")
                    and problems.append(message.text)
                ),
            )
            refused: list[str] = []
            page.on(
                "response",
                lambda answer: answer.status >= 400 and refused.append(f"{answer.status} {answer.url}"),
            )
            page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
            page.goto("/")
            page.set_input_files(
                "#file", files=[{"name": "noise.png", "mimeType": "image/png", "buffer": data}]
            )
            page.get_by_role("button", name="Upload").click()

            line = page.locator("#upload-list li")
            expect(line).to_have_attribute("data-status", "done", timeout=PROCESSED_WITHIN_MS)
            expect(line.get_by_role("link", name="Result page")).to_be_visible()
        finally:
            browser.close()

    assert not problems, problems
    assert not refused, refused
    endpoint = seaweed.endpoint_url  # type: ignore[attr-defined]
    assert f"POST {big_api}/uploads" in requests
    assert any(request.startswith(f"POST {endpoint}") for request in requests), requests
    assert any(request.endswith("/complete") for request in requests), requests
    assert f"POST {big_api}/upload" not in requests  # the file did not pass through the API
