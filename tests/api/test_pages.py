"""The HTML pages as served (no browser): escaping, the scripts they may run, the gallery's pages.

What the pages do in a browser is tested in tests/browser/.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import httpx
import pytest
from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.routes.pages import GALLERY_PAGE_SIZE, ORIGINAL_NOT_SHOWN, byte_size
from core.models import ImageTask
from core.processing.presets import BUILTIN_PRESETS
from tests import images, input_formats

HOSTILE = "<img src=x onerror=alert(1)>.png"


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, in order."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


async def upload(client: httpx.AsyncClient, name: str = "page.png") -> int:
    response = await client.post("/upload", files={"file": (name, images.png(), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def set_row(db: AsyncSession, task_id: int, **values: object) -> None:
    await db.execute(update(ImageTask).where(ImageTask.id == task_id).values(**values))
    await db.commit()


def assert_only_our_scripts(page: str) -> None:
    for script in Tags(page).all("script"):
        assert (script.get("src") or "").startswith("/static/"), f"inline or foreign script: {script}"
    assert "onerror=" not in page.replace("onerror=alert(1)&gt;", ""), "no live event handler attribute"


async def test_a_hostile_file_name_is_text_everywhere_on_the_result_page(client: httpx.AsyncClient) -> None:
    task_id = await upload(client, HOSTILE)

    response = await client.get(f"/result/{task_id}")

    page = response.text
    assert "<img src=x" not in page
    assert page.count(html.escape(HOSTILE)) >= 3, "title, heading and alt text carry it escaped"
    assert_only_our_scripts(page)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp


async def test_the_result_page_shows_the_original_and_follows_the_task_live(
    client: httpx.AsyncClient,
) -> None:
    data = images.png()
    response = await client.post("/upload", files={"file": ("side.png", data, "image/png")})
    task_id = response.json()["task_id"]

    page = (await client.get(f"/result/{task_id}")).text

    tags = Tags(page)
    sources = [img.get("src") for img in tags.all("img")]
    assert f"/tasks/{task_id}/original" in sources
    assert f"64×48 px · {byte_size(len(data))}" in page, "the original's pixel size and bytes"
    (root,) = [div for div in tags.all("div") if div.get("id") == "task"]
    assert root["data-events-url"] == f"/tasks/{task_id}/events"
    assert root["data-status-url"] == f"/status/{task_id}"
    assert {"type": "module", "src": "/static/result.js"} in tags.all("script")
    # Without JavaScript the page still refreshes itself while the task is not finished.
    assert re.search(r'<noscript><meta http-equiv="refresh" content="2"></noscript>', page)


async def test_a_heic_or_tiff_original_is_linked_not_shown_as_a_broken_image(
    client: httpx.AsyncClient,
) -> None:
    data = input_formats.tiff(images.photo(40, 30), compression="tiff_lzw")
    response = await client.post("/upload", files={"file": ("scan.tif", data, "image/tiff")})
    task_id = response.json()["task_id"]

    page = (await client.get(f"/result/{task_id}")).text

    tags = Tags(page)
    assert f"/tasks/{task_id}/original" not in [img.get("src") for img in tags.all("img")]
    assert {"href": f"/tasks/{task_id}/original"} in tags.all("a")
    assert html.escape(ORIGINAL_NOT_SHOWN) in page


async def test_the_upload_form_accepts_the_new_formats(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    (field,) = [tag for tag in Tags(page).all("input") if tag.get("type") == "file"]
    accepted = (field["accept"] or "").split(",")
    assert {"image/avif", "image/heic", "image/tiff", ".heic"} <= set(accepted)


async def test_a_failed_task_page_says_why_and_a_done_one_offers_the_download(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    failed, done = await upload(client, "bad.png"), await upload(client, "good.png")
    reason = "The image data is damaged or incomplete and cannot be decoded."
    output = "0123456789abcdef0123456789abcdef.png"
    await db.execute(
        update(ImageTask)
        .where(ImageTask.id == failed)
        .values(status="failed", error=reason, finished_at=func.now())
    )
    await db.execute(
        update(ImageTask)
        .where(ImageTask.id == done)
        .values(status="done", output_name=output, finished_at=func.now())
    )
    await db.commit()

    failed_page = (await client.get(f"/result/{failed}")).text
    done_page = (await client.get(f"/result/{done}")).text

    assert f'Processing failed:</strong> <span id="error-text">{reason}</span>' in failed_page
    assert 'http-equiv="refresh"' not in failed_page + done_page, "finished pages stop refreshing"
    (download,) = [a for a in Tags(done_page).all("a") if a.get("id") == "download"]
    assert download["href"] == f"/processed/{output}"
    assert download["download"] == "good.png"


async def test_the_upload_form_posts_one_file_without_script_and_loads_its_script(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/")).text

    tags = Tags(page)
    (form,) = tags.all("form")
    assert (form["action"], form["method"], form["enctype"]) == ("/upload", "post", "multipart/form-data")
    file_input, focus_input = tags.all("input")
    assert file_input["name"] == "file" and "multiple" not in file_input, "the plain post sends one file"
    # The focus point: optional, labelled, its hint tied to it, posted as the form field `focus`.
    assert focus_input["name"] == "focus" and "required" not in focus_input
    assert 'for="focus"' in page and focus_input["aria-describedby"] == "focus-hint"
    assert 'id="focus-hint"' in page
    assert {"type": "module", "src": "/static/upload.js"} in tags.all("script")
    assert_only_our_scripts(page)


async def test_the_upload_form_offers_every_preset_and_says_what_it_does(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text

    options = re.findall(r'<option value="([^"]+)"( selected)?>', page)
    assert [name for name, _ in options] == list(BUILTIN_PRESETS)
    assert [name for name, selected in options if selected] == ["default"]
    for preset in BUILTIN_PRESETS.values():
        assert f"<dd>{html.escape(preset.description)}</dd>" in page
    assert 'name="preset"' in page and 'for="preset"' in page


@pytest.mark.parametrize(
    "path",
    ["/static/live.js", "/static/upload.js", "/static/result.js", "/static/focus.js", "/static/resumable.js"],
)
async def test_scripts_are_served_as_javascript(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "innerHTML" not in response.text, "data goes on pages as text only"


@pytest.mark.parametrize("path", ["/", "/gallery", "/result/{id}"])
async def test_every_page_links_the_upload_form_and_the_gallery_from_its_header(
    client: httpx.AsyncClient, path: str
) -> None:
    page = (await client.get(path.format(id=await upload(client)))).text

    header = page[page.index("<header>") : page.index("</header>")]
    hrefs = [a.get("href") for a in Tags(header).all("a")]
    assert "/" in hrefs and "/gallery" in hrefs


async def gallery_ids(client: httpx.AsyncClient) -> list[int]:
    """Task ids in the order the gallery shows them, following its "older" links to the end."""
    ids: list[int] = []
    url: str | None = "/gallery"
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200
        links = Tags(response.text).all("a")
        page_ids = [
            int(a["href"].rsplit("/", 1)[1]) for a in links if (a.get("href") or "").startswith("/result/")
        ]
        assert len(page_ids) <= GALLERY_PAGE_SIZE
        ids += page_ids
        older = [a["href"] for a in links if a.get("rel") == "next"]
        url = older[0] if older else None
        assert url is None or len(page_ids) == GALLERY_PAGE_SIZE, "only the last page is short"
    return ids


async def api_ids(client: httpx.AsyncClient) -> list[int]:
    ids: list[int] = []
    cursor: int | None = None
    while True:
        params = {"limit": 100} if cursor is None else {"limit": 100, "cursor": cursor}
        body = (await client.get("/tasks", params=params)).json()
        ids += [item["task_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


async def test_the_gallery_pages_through_every_task_newest_first_like_get_tasks(
    client: httpx.AsyncClient,
) -> None:
    # Enough tasks for the gallery to need more than one page, whatever ran before.
    ours = [await upload(client, f"gallery-{n}.png") for n in range(GALLERY_PAGE_SIZE + 1)]

    shown = await gallery_ids(client)

    assert shown[: len(ours)] == ours[::-1], "newest first"
    assert shown == sorted(set(shown), reverse=True), "no task twice, none out of order"
    assert shown == await api_ids(client), "the same query as GET /tasks"


async def test_the_gallery_shows_finished_thumbnails_lazily_and_escapes_names(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    task_id = await upload(client, HOSTILE)
    output = "fedcba9876543210fedcba9876543210.png"
    await db.execute(
        update(ImageTask).where(ImageTask.id == task_id).values(status="done", output_name=output)
    )
    await db.commit()

    page = (await client.get("/gallery")).text

    (thumb,) = [img for img in Tags(page).all("img") if img.get("src") == f"/processed/{output}"]
    assert thumb["loading"] == "lazy"
    assert thumb["alt"] == f"Processed: {HOSTILE}"  # the parser unescapes; the page had it escaped
    assert "<img src=x" not in page
    assert_only_our_scripts(page)
    assert 'class="badge badge-done"' in page


@pytest.mark.parametrize("cursor", ["0", "abc", "2147483648"])
async def test_an_impossible_gallery_cursor_is_422(client: httpx.AsyncClient, cursor: str) -> None:
    assert (await client.get("/gallery", params={"cursor": cursor})).status_code == 422
