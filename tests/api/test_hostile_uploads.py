"""Uploads made to cost the API work, against the real API process: each is refused quickly, with
a 422 that says why, and leaves nothing behind.

The test stack caps uploads at 1 MB (tests/conftest.py), so these files prove each bound by its
count; tests/core/test_image_structure.py proves the time on files of tens of megabytes.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import httpx
import pytest

from api.callback_urls import CONTROL_CHARACTERS
from core.formats import more_frames_than_message
from core.image_structure import (
    PNG_MAX_CHUNKS,
    PNG_MAX_INFLATED_CHUNK_BYTES,
    PNG_TOO_MANY_CHUNKS,
    png_metadata_too_large_message,
)
from core.json_fields import HAS_NUL, MAX_JSON_DEPTH, TOO_DEEP
from tests import images
from tests.conftest import TEST_SETTINGS

MAX_FRAMES = int(TEST_SETTINGS["MAX_FRAMES"])
# Generous for a loaded machine; the walks these files force take well under a tenth of it.
DEADLINE_SECONDS = 5.0


def stored_files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


async def refused(client: httpx.AsyncClient, uploads_dir: Path, data: bytes, **fields: str) -> httpx.Response:
    """POST `data` (under the 1 MB cap) and return the answer, checking it came within the deadline
    and left no file."""
    assert len(data) < int(TEST_SETTINGS["MAX_UPLOAD_BYTES"])
    before = stored_files(uploads_dir)
    started = time.monotonic()
    response = await client.post("/upload", files={"file": ("x.bin", data, "image/png")}, data=fields)
    assert time.monotonic() - started < DEADLINE_SECONDS
    assert stored_files(uploads_dir) == before
    return response


async def test_a_png_of_more_chunks_than_the_limit_is_refused_naming_the_limit(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    data = images.png_with_empty_chunks(PNG_MAX_CHUNKS + 5_000)

    response = await refused(client, uploads_dir, data)

    assert response.status_code == 422
    assert response.json() == {"detail": PNG_TOO_MANY_CHUNKS}


async def test_a_gif_of_sixty_thousand_frames_is_refused_one_frame_past_the_limit(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    data = images.gif_with_tiny_frames(60_000)

    response = await refused(client, uploads_dir, data)

    assert response.status_code == 422
    assert response.json() == {"detail": more_frames_than_message(MAX_FRAMES)}
    assert response.json() == {"detail": "Animation has more than 50 frames; the limit is 50."}


@pytest.mark.parametrize(("kind", "body"), [(b"zTXt", b"comment\0\0"), (b"iCCP", b"profile\0\0")])
async def test_a_png_with_an_oversized_text_or_icc_chunk_is_told_why(
    client: httpx.AsyncClient, uploads_dir: Path, kind: bytes, body: bytes
) -> None:
    # Before: 415 "Unsupported file type", which it is not.
    inflating = zlib.compress(b"a" * (PNG_MAX_INFLATED_CHUNK_BYTES + 1))
    data = images.png_with_chunks((kind, body + inflating))

    response = await refused(client, uploads_dir, data)

    assert response.status_code == 422
    assert response.json() == {"detail": png_metadata_too_large_message(kind.decode())}


@pytest.mark.parametrize("field", ["ops", "outputs"])
async def test_json_nested_a_thousand_levels_deep_is_a_422_naming_the_field(
    client: httpx.AsyncClient, uploads_dir: Path, field: str
) -> None:
    # 2 KB of brackets: json.loads raised RecursionError, answered 500.
    response = await refused(client, uploads_dir, images.png(), **{field: "[" * 1000 + "]" * 1000})

    assert response.status_code == 422
    assert response.json() == {"detail": TOO_DEEP.format(field=field)}
    assert response.json() == {"detail": f"`{field}` is nested more than {MAX_JSON_DEPTH} levels deep."}


async def test_a_nul_in_an_ops_string_is_a_422_not_a_500(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    # Valid JSON, but PostgreSQL's jsonb refuses \u0000: the row's INSERT failed with a 500.
    ops = '[{"op": "watermark", "text": "a\\u0000b"}]'
    response = await refused(client, uploads_dir, images.png(), ops=ops)

    assert response.status_code == 422
    assert response.json() == {"detail": HAS_NUL.format(field="ops")}


async def test_a_control_character_in_a_callback_url_is_a_422_not_a_500(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    # PostgreSQL's text refuses a NUL: the row's INSERT failed with a 500.
    response = await refused(client, uploads_dir, images.png(), callback_url="http://93.184.216.34/\x00x")

    assert response.status_code == 422
    assert response.json() == {"detail": CONTROL_CHARACTERS}


async def test_json_nested_within_the_limit_is_judged_as_usual(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH

    response = await refused(client, uploads_dir, images.png(), ops=nested)

    assert response.status_code == 422
    assert response.json()["detail"].startswith("`ops`: [0]:")
