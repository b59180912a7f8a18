"""Retry, Cancel and Reprocess in a real browser (headless Chromium, as tests/browser/test_web_ui.py),
against the real API, PostgreSQL and a worker process started when a test needs it."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from core.models import ImageTask
from devstack.stack import stop_process
from tests import images
from tests.browser.test_web_ui import CHROMIUM, CHROMIUM_ARGS, PROCESSED_WITHIN_MS, Worker, on_console
from tests.database import session_on

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
Page = sync_api.Page
expect = sync_api.expect

HOSTILE_REASON = "<script>window.pwned = 1</script> & <b>not bold</b>"


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: sync_api.Browser, api_process: str) -> Iterator[Page]:
    context = browser.new_context(base_url=api_process, viewport={"width": 1100, "height": 800})
    tab = context.new_page()
    problems: list[str] = []
    # A script that throws or is blocked by the CSP shows up only here.
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", lambda message: on_console(message, problems))
    yield tab
    context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def controls_worker(stack_env: dict[str, str], workdir: Path) -> Iterator[Worker]:
    started = Worker(stack_env, workdir / "browser-controls-worker.log")
    yield started
    if started.process is not None:
        assert stop_process(started.process) == 0, started.log_file.read_text()[-3000:]


def upload(api_process: str, name: str, data: bytes | None = None) -> int:
    photo = (name, data or images.jpeg(640, 480), "image/jpeg")
    answer = httpx.post(f"{api_process}/upload", files={"file": photo}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["task_id"]


def status_of(api_process: str, task_id: int) -> dict:
    return httpx.get(f"{api_process}/status/{task_id}", timeout=30).json()


def mark_failed(database_url: str, task_ids: list[int], reason: str) -> None:
    """As a worker that gave up would leave the rows (in a thread: Playwright's sync API owns this
    thread's event loop)."""

    async def write() -> None:
        async with session_on(database_url) as session:
            await session.execute(
                update(ImageTask)
                .where(ImageTask.id.in_(task_ids))
                .values(status="failed", error=reason, attempts=3, leased_until=None)
            )
            await session.commit()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write()).result()


def test_cancel_on_a_waiting_result_page_makes_it_final(page: Page, api_process: str) -> None:
    # Runs first, before this module's worker is up, so the task is seen waiting.
    task_id = upload(api_process, "wait-then-cancel.jpg")
    page.goto(f"/result/{task_id}")
    expect(page.locator("#status")).to_have_text("pending")
    expect(page.get_by_role("button", name="Retry")).to_be_hidden()

    page.get_by_role("button", name="Cancel processing").click()

    expect(page).to_have_url(f"{api_process}/result/{task_id}")
    expect(page.locator("#status")).to_have_text("cancelled")
    expect(page.locator("#processed-placeholder")).to_have_text("Cancelled: not processed.")
    expect(page.get_by_role("button", name="Cancel processing")).to_be_hidden()
    expect(page.get_by_role("button", name="Reprocess")).to_be_visible()
    assert status_of(api_process, task_id)["status"] == "cancelled"


def test_a_form_on_another_sites_page_cannot_cancel(page: Page, api_process: str) -> None:
    task_id = upload(api_process, "not-yours-to-cancel.jpg")
    action = f"{api_process}/tasks/{task_id}/cancel"
    page.set_content(f'<form method="post" action="{action}"><button>Win a prize</button></form>')

    with page.expect_response(f"{api_process}/tasks/{task_id}/cancel") as answer:
        page.get_by_role("button", name="Win a prize").click()

    assert answer.value.status == 403
    assert status_of(api_process, task_id)["status"] == "pending"
    httpx.post(f"{api_process}/tasks/{task_id}/cancel", timeout=30)  # not left for the worker


def test_the_failed_tasks_page_lists_reasons_escaped_in_pages_and_retries(
    page: Page, api_process: str, stack_env: dict[str, str], controls_worker: Worker
) -> None:
    controls_worker.ensure_running()
    older = [upload(api_process, f"older-{n}.jpg", images.jpeg(40, 30)) for n in range(20)]
    retried = upload(api_process, "retry-me.jpg")
    mark_failed(stack_env["DATABASE_URL"], [retried], HOSTILE_REASON)
    mark_failed(stack_env["DATABASE_URL"], older, "An older failure.")

    page.goto("/failed")
    assert page.evaluate("() => window.pwned") is None
    first = page.locator(".failed-item").first
    expect(first.locator(".card-name")).to_have_text("retry-me.jpg")
    expect(first.locator(".failed-reason")).to_have_text(HOSTILE_REASON)
    expect(page.locator(".failed-item")).to_have_count(20)
    page.get_by_role("link", name="Older failures").click()
    expect(page.locator(".failed-item").first.locator(".card-name")).to_have_text("older-0.jpg")
    page.get_by_role("link", name="Newest").click()

    page.get_by_role("button", name="Retry retry-me.jpg").click()

    expect(page).to_have_url(f"{api_process}/result/{retried}")
    expect(page.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)
    page.wait_for_function("() => document.getElementById('processed-image').naturalWidth === 640")
    expect(page.get_by_role("button", name="Retry")).to_be_hidden()
    body = status_of(api_process, retried)
    assert (body["status"], body["attempts"], body["error"]) == ("done", 1, None)


def test_retry_on_a_failed_result_page(
    page: Page, api_process: str, stack_env: dict[str, str], controls_worker: Worker
) -> None:
    controls_worker.ensure_running()
    task_id = upload(api_process, "failed-here.jpg")
    mark_failed(stack_env["DATABASE_URL"], [task_id], "It broke.")
    page.goto(f"/result/{task_id}")
    expect(page.get_by_role("alert").first).to_have_text("Processing failed: It broke.")
    expect(page.get_by_role("button", name="Cancel processing")).to_be_hidden()

    page.get_by_role("button", name="Retry").click()

    expect(page.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)
    expect(page.locator("#error")).to_be_hidden()


def test_reprocess_on_a_result_page_replaces_the_output(
    page: Page, api_process: str, controls_worker: Worker
) -> None:
    controls_worker.ensure_running()
    task_id = upload(api_process, "reprocess-me.jpg")
    page.goto(f"/result/{task_id}")
    expect(page.locator("#status")).to_have_text("done", timeout=PROCESSED_WITHIN_MS)
    page.wait_for_function("() => document.getElementById('processed-image').naturalWidth === 640")

    page.get_by_label("Reprocess with another preset").select_option("thumbnail")
    page.get_by_role("button", name="Reprocess").click()

    page.wait_for_function(
        "() => document.getElementById('processed-image')?.naturalWidth === 256", timeout=PROCESSED_WITHIN_MS
    )
    expect(page.locator("#status")).to_have_text("done")
    assert status_of(api_process, task_id)["processing"][0]["preset"] == "thumbnail"
