"""Extra form fields: ignored and named when they are not ours, refused when they look misspelt.

The rule itself is pure (api.form_fields), tested on both sides; the rest goes through the real API.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from api import uploads
from api.form_fields import UNKNOWN_FIELD, meant_field
from api.routes.tasks import FORM_FIELDS
from core.models import ImageTask
from tests import images

FIELDS_SHOWN = ", ".join(FORM_FIELDS)


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("presets", "preset"),  # plural
        ("Preset", "preset"),  # case
        ("output", "outputs"),  # singular
        ("op", "ops"),
        ("opts", "ops"),  # one letter more
        ("prest", "preset"),  # one letter less
        ("callback-url", "callback_url"),  # separators
        ("CallbackURL", "callback_url"),
        ("callbak_url", "callback_url"),
        ("callback", "callback_url"),
        ("files", "file"),
    ],
)
def test_a_name_close_to_a_field_is_taken_for_a_misspelling(name: str, meant: str) -> None:
    assert meant_field(name, FORM_FIELDS) == meant


@pytest.mark.parametrize(
    "name",
    [
        "submit",
        "csrf_token",
        "csrfmiddlewaretoken",  # Django
        "_token",  # Laravel
        "authenticity_token",  # Rails, with `utf8` and `commit`
        "utf8",
        "commit",
        "MAX_FILE_SIZE",  # PHP
        "title",
        "description",
        "filename",
        "options",
        "",
        "-_-",
    ],
)
def test_a_name_unlike_every_field_is_not_a_misspelling(name: str) -> None:
    assert meant_field(name, FORM_FIELDS) is None


def form(*fields: tuple[str, str], file_first: bool = False) -> list[tuple[str, tuple]]:
    """httpx `files=` for a form of text fields and one image, in the order a browser sends them."""
    text = [(name, (None, value)) for name, value in fields]
    image = [("file", ("photo.jpg", images.jpeg(64, 48), "image/jpeg"))]
    return image + text if file_first else text + image


async def test_a_submit_button_and_a_csrf_token_are_ignored_and_named(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    sent = form(
        ("csrf_token", "f3a9c0de"), ("preset", "thumbnail"), ("submit", "Upload"), ("submit", "again")
    )

    response = await client.post("/upload", files=sent)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ignored_fields"] == ["csrf_token", "submit"]  # in the order sent, each once
    task = await db.get(ImageTask, body["task_id"])
    assert task is not None
    assert [output["preset"] for output in task.processing["outputs"]] == ["thumbnail"], "ours still count"


async def test_an_upload_with_only_our_fields_names_none(client: httpx.AsyncClient) -> None:
    response = await client.post("/upload", files=form(("preset", "web"), file_first=True))

    assert response.status_code == 200
    assert response.json()["ignored_fields"] == []


async def test_a_browser_form_with_a_submit_button_is_sent_to_the_result_page(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/upload", files=form(("submit", "Upload")), headers={"Accept": "text/html,application/xhtml+xml"}
    )

    assert response.status_code == 303
    assert response.headers["location"].startswith("/result/")


async def test_a_long_ignored_name_is_shortened_in_the_answer(client: httpx.AsyncClient) -> None:
    response = await client.post("/upload", files=form(("x" * 500, "1")))

    assert response.status_code == 200
    assert response.json()["ignored_fields"] == ["x" * 40]


@pytest.mark.parametrize(
    ("name", "meant"),
    [("presets", "preset"), ("output", "outputs"), ("op", "ops"), ("callback-url", "callback_url")],
)
async def test_a_misspelt_field_is_refused_saying_which_was_meant(
    client: httpx.AsyncClient, uploads_dir: Path, name: str, meant: str
) -> None:
    before = set(uploads_dir.iterdir())

    response = await client.post("/upload", files=form(("submit", "Upload"), (name, "web")))

    assert response.status_code == 422
    assert response.json() == {"detail": UNKNOWN_FIELD.format(name=name, known=meant, fields=FIELDS_SHOWN)}
    assert f"did you mean '{meant}'?" in response.json()["detail"]
    assert set(uploads_dir.iterdir()) == before


async def test_thousands_of_tiny_fields_are_refused_at_the_bound_and_quickly(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    before = set(uploads_dir.iterdir())
    fields = [(f"f{index}", "x") for index in range(5000)]

    started = time.monotonic()
    response = await client.post("/upload", files=form(*fields))

    assert response.status_code == 422
    assert response.json() == {"detail": uploads.TOO_MANY_PARTS}
    assert time.monotonic() - started < 10
    assert set(uploads_dir.iterdir()) == before


async def test_as_many_ignored_fields_as_the_bound_allows_are_accepted(client: httpx.AsyncClient) -> None:
    fields = [(f"extra{index}", "x") for index in range(uploads.MAX_PARTS - 1)]  # and the file

    response = await client.post("/upload", files=form(*fields))

    assert response.status_code == 200
    assert response.json()["ignored_fields"] == [name for name, _ in fields]


async def test_an_oversized_ignored_field_is_refused_like_any_other(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/upload", files=form(("csrf_token", "t" * (uploads.MAX_TEXT_FIELD_BYTES + 1)))
    )

    assert response.status_code == 413
    assert response.json() == {"detail": uploads.FIELD_TOO_LARGE}
