"""The web UI in a real browser: headless Chromium (Debian's package) driven by Playwright, against
the real API and a real worker process.

Where no Chromium is installed, the whole module is skipped with one line saying so. Screenshots of
each page go to $SCREENSHOTS_DIR when set (`SCREENSHOTS_DIR=docs/screenshots` refreshes the README's),
else to the session's scratch folder, so a test run leaves the work tree as it was.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.formats import DAMAGED_MESSAGE
from devstack.stack import PROJECT_ROOT, start_worker, stop_process
from tests import images

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("browser tests need Chromium: none found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
Browser, ConsoleMessage, Page, Response = (
    sync_api.Browser,
    sync_api.ConsoleMessage,
    sync_api.Page,
    sync_api.Response,
)
expect = sync_api.expect

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous for a shared 2-core machine; each expectation still ends as soon as it holds.
PROCESSED_WITHIN_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(workdir: Path) -> Path:
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or workdir / "screenshots")
    folder = folder if folder.is_absolute() else PROJECT_ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Worker:
    """A worker process started on demand, so a test can watch a task wait before it runs."""

    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        self.env, self.log_file = env, log_file
        self.process: subprocess.Popen | None = None

    def ensure_running(self) -> None:
        if self.process is None:
            self.process = start_worker(self.env, log_file=self.log_file)


@pytest.fixture(scope="module")
def worker(stack_env: dict[str, str], workdir: Path) -> Iterator[Worker]:
    started = Worker(stack_env, workdir / "browser-worker.log")
    yield started
    if started.process is not None:
        assert stop_process(started.process) == 0, started.log_file.read_text()[-3000:]


@pytest.fixture
def page(browser: Browser, api_process: str) -> Iterator[Page]:
    context = browser.new_context(base_url=api_process, viewport={"width": 1100, "height": 800})
    tab = context.new_page()
    problems: list[str] = []
    # A script blocked by the CSP, or one that throws, shows up here: the page would look fine
    # without JavaScript, so these are the only trace of a broken script.
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", lambda message: on_console(message, problems))
    yield tab
    context.close()
    assert not problems, problems


@dataclass
class Traffic:
    """What a page asked the server for, and which answers were refusals (400 and up)."""

    requested: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture
def traffic(page: Page) -> Iterator[Traffic]:
    seen = Traffic()
    page.on("request", lambda request: seen.requested.append(request.url))

    def on_response(answer: Response) -> None:
        if answer.status >= 400:
            seen.refused.append(f"{answer.status} {answer.url}")

    page.on("response", on_response)
    yield seen
    assert not seen.refused, f"refusals the test did not expect: {seen.refused}"


def on_console(message: ConsoleMessage, problems: list[str]) -> None:
    # Answers of 400 and more are logged as "Failed to load resource"; the tests look at those
    # themselves (the traffic fixture). Anything else logged as an error is a broken page.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        problems.append(f"console: {message.text}")


def drop_files(page: Page, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """Drop files onto an element the way a desktop drag-and-drop delivers them."""
    encoded = [{"name": n, "type": t, "data": base64.b64encode(d).decode()} for n, d, t in files]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const file of files) {
                const bytes = Uint8Array.from(atob(file.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], file.name, { type: file.type }));
            }
            return transfer;
        }""",
        encoded,
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


# Records every status each upload line shows, so the test can tell the changes happened live.
RECORD_STATUSES = """() => {
    window.seenStatuses = {};
    new MutationObserver((changes) => {
        for (const change of changes) {
            const line = change.target;
            if (change.attributeName !== "data-status" || !line.dataset.taskId) continue;
            (window.seenStatuses[line.dataset.taskId] ??= []).push(line.dataset.status);
        }
    }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ["data-status"] });
    window.notReloaded = true;
}"""


def in_order(seen: list[str]) -> bool:
    order = ["pending", "processing", "done"]
    positions = [order.index(status) for status in dict.fromkeys(seen)]
    return positions == sorted(positions)


def test_a_waiting_result_page_turns_done_without_a_reload(
    page: Page, traffic: Traffic, api_process: str, worker: Worker, screenshots: Path
) -> None:
    # Runs first, before any worker is up, so the page is seen waiting. (Playwright's sync API
    # cannot run inside an event loop, so these tests are plain functions with a plain client.)
    photo = ("harbour.jpg", images.jpeg(800, 600), "image/jpeg")
    created = httpx.post(f"{api_process}/upload", files={"file": photo}, timeout=30)
    task_id = created.json()["task_id"]
    page.goto(f"/result/{task_id}")
    page.evaluate("() => { window.notReloaded = true; }")
    expect(page.locator("#status")).to_have_text("pending")
    expect(page.locator("#processed-placeholder")).to_have_text("Not processed yet.")
    expect(page.locator("#download")).to_be_hidden()
    expect(page.get_by_alt_text("Original: harbour.jpg")).to_be_visible()
    page.screenshot(path=screenshots / "result-live.png", full_page=True)

    worker.ensure_running()

    expect(page.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)
    processed = page.locator("#processed-image")
    expect(processed).to_have_attribute("alt", "Processed: harbour.jpg")
    expect(page.locator("#download")).to_be_visible()
    assert page.evaluate("() => window.notReloaded") is True, "the page was updated, not reloaded"
    assert f"{api_process}/tasks/{task_id}/events" in traffic.requested
    page.wait_for_function("() => document.getElementById('processed-image').naturalWidth === 800")
    expect(page).to_have_title("harbour.jpg · done · imagequeue")
    page.screenshot(path=screenshots / "result-done.png", full_page=True)


def test_two_dropped_files_upload_with_progress_and_go_live_to_done(
    page: Page, traffic: Traffic, worker: Worker, screenshots: Path
) -> None:
    worker.ensure_running()
    page.goto("/")
    page.evaluate(RECORD_STATUSES)

    drop_files(
        page,
        "#upload-form",
        [("beach.jpg", images.jpeg(640, 480), "image/jpeg"), ("logo.png", images.png(320, 200), "image/png")],
    )

    lines = page.locator("#upload-list li")
    expect(lines).to_have_count(2)
    for line, name in zip(lines.all(), ("beach.jpg", "logo.png"), strict=True):
        expect(line.locator(".upload-name")).to_have_text(name)
        expect(line).to_have_attribute("data-status", "done", timeout=PROCESSED_WITHIN_MS)
        expect(line.locator("progress")).to_have_attribute("value", "100")
        expect(line.get_by_role("link", name="Result page")).to_have_attribute(
            "href", re.compile(r"^/result/\d+$")
        )
    seen = page.evaluate("() => window.seenStatuses")
    assert len(seen) == 2 and all(
        s[0] == "pending" and s[-1] == "done" and in_order(s) for s in seen.values()
    )
    assert page.evaluate("() => window.notReloaded") is True
    page.screenshot(path=screenshots / "upload.png", full_page=True)

    page.get_by_role("link", name="Result page").first.click()
    expect(page.locator("#processed-image")).to_have_attribute("alt", "Processed: beach.jpg")
    page.wait_for_function("() => document.getElementById('processed-image').naturalWidth === 640")
    expect(page.locator("#output-facts")).to_contain_text("640×480 px")

    page.get_by_role("link", name="Gallery").first.click()
    expect(page).to_have_url(re.compile(r"/gallery$"))
    for name in ("beach.jpg", "logo.png"):
        card = page.locator(".card", has_text=name).first
        expect(card.locator(".badge")).to_have_text("done")
        expect(card.get_by_alt_text(f"Processed: {name}")).to_have_attribute("loading", "lazy")
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.thumb')].slice(0, 2).every((img) => img.naturalWidth > 0)"
    )
    page.screenshot(path=screenshots / "gallery.png", full_page=True)


def test_the_chosen_preset_is_applied(page: Page, traffic: Traffic, worker: Worker) -> None:
    worker.ensure_running()
    page.goto("/")
    expect(page.get_by_label("Processing")).to_have_value("default")

    page.get_by_label("Processing").select_option("thumbnail")
    page.set_input_files(
        "#file", files=[{"name": "thumb-me.jpg", "mimeType": "image/jpeg", "buffer": images.jpeg(640, 480)}]
    )
    page.get_by_role("button", name="Upload").click()

    line = page.locator("#upload-list li")
    expect(line).to_have_attribute("data-status", "done", timeout=PROCESSED_WITHIN_MS)
    line.get_by_role("link", name="Result page").click()
    page.wait_for_function("() => document.getElementById('processed-image').naturalWidth === 256")


def test_a_damaged_image_shows_why_it_failed_in_words(page: Page, traffic: Traffic, worker: Worker) -> None:
    worker.ensure_running()
    page.goto("/")

    page.set_input_files(
        "#file", files=[{"name": "cut.jpg", "mimeType": "image/jpeg", "buffer": images.truncated_jpeg()}]
    )
    page.get_by_role("button", name="Upload").click()

    line = page.locator("#upload-list li")
    expect(line).to_have_attribute("data-status", "failed", timeout=PROCESSED_WITHIN_MS)
    expect(line.locator(".error")).to_have_text(DAMAGED_MESSAGE)
    line.get_by_role("link", name="Result page").click()
    expect(page.get_by_role("alert")).to_have_text(f"Processing failed: {DAMAGED_MESSAGE}")
    expect(page.locator("#status")).to_have_text("failed")


def test_a_refused_file_says_why_on_its_line(page: Page, traffic: Traffic) -> None:
    page.goto("/")

    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.get_by_role("button", name="Upload").click()

    expect(page.locator("#upload-list li .error")).to_contain_text("Refused: ")
    expect(page.locator("#upload-list li")).to_have_attribute("data-status", "refused")
    assert [answer.split()[0] for answer in traffic.refused] == ["415"]
    traffic.refused.clear()


def test_without_event_source_the_status_is_polled(page: Page, traffic: Traffic, worker: Worker) -> None:
    worker.ensure_running()
    page.add_init_script("delete window.EventSource;")
    page.goto("/")

    page.set_input_files(
        "#file", files=[{"name": "poll.png", "mimeType": "image/png", "buffer": images.png()}]
    )
    page.get_by_role("button", name="Upload").click()

    expect(page.locator("#upload-list li")).to_have_attribute(
        "data-status", "done", timeout=PROCESSED_WITHIN_MS
    )
    assert any("/status/" in url for url in traffic.requested)
    assert not any(url.endswith("/events") for url in traffic.requested)


def test_without_javascript_the_form_posts_one_file_and_the_result_page_refreshes_itself(
    browser: Browser, api_process: str, worker: Worker
) -> None:
    worker.ensure_running()
    context = browser.new_context(base_url=api_process, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/")
        expect(page.locator("#drop-hint")).to_be_hidden()  # nothing promises what only the script does

        page.set_input_files(
            "#file", files=[{"name": "plain.png", "mimeType": "image/png", "buffer": images.png()}]
        )
        page.get_by_role("button", name="Upload").click()

        expect(page).to_have_url(re.compile(r"/result/\d+$"))
        expect(page.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)
        expect(page.get_by_alt_text("Processed: plain.png")).to_be_visible()
    finally:
        context.close()


def test_a_hostile_file_name_stays_text_in_every_page(page: Page, traffic: Traffic, worker: Worker) -> None:
    worker.ensure_running()
    hostile = "<img src=x onerror=alert(1)>.png"
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto("/")

    drop_files(page, "#upload-form", [(hostile, images.png(), "image/png")])

    line = page.locator("#upload-list li")
    expect(line).to_have_attribute("data-status", "done", timeout=PROCESSED_WITHIN_MS)
    expect(line.locator(".upload-name")).to_have_text(hostile)
    line.get_by_role("link", name="Result page").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(hostile)
    page.goto("/gallery")
    expect(page.get_by_alt_text(f"Processed: {hostile}").first).to_be_visible()
    assert dialogs == [], "no script from the name ever ran"
    assert page.locator("img[src='x']").count() == 0


# Seconds of blurring after the decode (about 0.35 s each on a 3000 × 2000 picture here), so the
# page is caught between the placeholder and the result; light enough for the worker's pool.
SLOW_BLURS = json.dumps([{"op": "blur", "radius": 100}] * 8)
GREEN_PICTURE = (30, 140, 70)

# One look at the waiting box, taken in the page at one instant.
PLACEHOLDER_STATE = """() => {
    const box = document.getElementById("processed-placeholder");
    const canvas = document.getElementById("placeholder-preview");
    const centre = canvas && !canvas.hidden && canvas.width
        ? Array.from(canvas.getContext("2d").getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data)
        : null;
    return {
        status: document.getElementById("status").textContent,
        processed: document.getElementById("processed-image") !== null,
        background: box ? getComputedStyle(box).backgroundColor : null,
        ratio: box ? box.clientWidth / box.clientHeight : null,
        served: box ? box.dataset.thumbhash || null : null,
        centre,
    };
}"""


def wait_until(check: Callable[[], bool], *, what: str, timeout: float = 60) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def slow_green_task(api_process: str) -> int:
    picture = images.encode(Image.new("RGB", (3000, 2000), GREEN_PICTURE), "JPEG")
    created = httpx.post(
        f"{api_process}/upload",
        files={"file": ("meadow.jpg", picture, "image/jpeg")},
        data={"ops": SLOW_BLURS},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    return created.json()["task_id"]


def assert_placeholder_shown(state: dict) -> None:
    assert state["status"] in ("pending", "processing") and not state["processed"], state
    shown = [int(value) for value in re.findall(r"\d+", state["background"])]
    assert all(abs(a - b) <= 4 for a, b in zip(shown, GREEN_PICTURE, strict=True)), (
        f"the dominant colour: {state}"
    )
    assert state["ratio"] == pytest.approx(1.5, rel=0.05), "the box has the picture's proportions"
    red, green, blue, alpha = state["centre"]
    assert alpha == 255 and green > red + 40 and green > blue + 40, f"the preview is green: {state}"


def test_the_placeholder_shows_while_the_result_is_made(
    page: Page, traffic: Traffic, api_process: str, worker: Worker, screenshots: Path
) -> None:
    worker.ensure_running()
    task_id = slow_green_task(api_process)
    page.goto(f"/result/{task_id}")

    # Drawn when the stream brings it (the page was served before the worker decoded the picture).
    expect(page.locator("#placeholder-preview")).to_be_visible(timeout=PROCESSED_WITHIN_MS)
    assert_placeholder_shown(page.evaluate(PLACEHOLDER_STATE))
    page.screenshot(path=screenshots / "result-placeholder.png", full_page=True)

    expect(page.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)
    expect(page.locator("#processed-image")).to_be_visible()
    expect(page.locator("#processed-placeholder")).to_have_count(0)


def test_a_page_served_after_the_placeholder_shows_it_at_once(
    page: Page, traffic: Traffic, api_process: str, worker: Worker
) -> None:
    worker.ensure_running()
    task_id = slow_green_task(api_process)

    def recorded() -> bool:
        return httpx.get(f"{api_process}/status/{task_id}", timeout=10).json()["placeholder"] is not None

    wait_until(recorded, what="the worker records the placeholder")
    page.goto(f"/result/{task_id}")

    state = page.evaluate(PLACEHOLDER_STATE)
    assert state["served"], "the page came with the placeholder"
    assert_placeholder_shown(state)
    expect(page.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)


def test_a_click_on_the_preview_sets_the_focus_point_that_is_sent(
    page: Page, traffic: Traffic, api_process: str, worker: Worker
) -> None:
    worker.ensure_running()
    page.goto("/")
    picker = page.locator("#focus-picker")
    expect(picker).to_be_hidden()
    field = page.get_by_label("Focus point (optional)")
    expect(field).to_have_attribute("aria-describedby", "focus-hint")

    # A format this browser cannot draw: no preview, the field is still there to type in.
    tiff = images.encode(Image.new("RGB", (400, 200), (200, 200, 200)), "TIFF")
    page.set_input_files("#file", files=[{"name": "scan.tif", "mimeType": "image/tiff", "buffer": tiff}])
    expect(field).to_be_editable()
    page.set_input_files(
        "#file", files=[{"name": "wide.png", "mimeType": "image/png", "buffer": images.png(640, 320)}]
    )
    expect(picker).to_be_visible()
    preview = page.locator("#focus-preview")
    expect(preview).to_have_attribute("aria-label", "Preview of wide.png")
    # Drawn at 320 × 160: a click a quarter across and three quarters down.
    size = page.evaluate(
        "() => { const c = document.getElementById('focus-preview'); return [c.width, c.height]; }"
    )
    assert size == [320, 160]
    preview.click(position={"x": 80, "y": 120})
    expect(field).to_have_value("0.25,0.75")
    marked = page.evaluate(
        "() => Array.from(document.getElementById('focus-preview').getContext('2d')"
        ".getImageData(80, 120, 1, 1).data)"
    )
    assert marked[:3] == [11, 87, 208], f"the mark is drawn at the point: {marked}"

    page.get_by_role("button", name="Upload").click()
    line = page.locator("#upload-list li")
    expect(line.get_by_role("link", name="Result page")).to_be_visible(timeout=PROCESSED_WITHIN_MS)
    task_id = line.get_attribute("data-task-id")
    assert httpx.get(f"{api_process}/status/{task_id}", timeout=10).json()["focus"] == [0.25, 0.75]
    expect(field).to_have_value("")  # the point belonged to that picture
    expect(picker).to_be_hidden()
