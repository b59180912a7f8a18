"""tus 1.0 resumable uploads at /files/ against the real API process, PostgreSQL and NATS: a third-party
client (tuspy) end to end, and raw requests for every refusal the protocol and the upload rules ask."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from tusclient.client import TusClient

from api.intake import IDEMPOTENCY_KEY_REUSED
from api.routes import resumable
from api.tus_protocol import VERSION_UNSUPPORTED
from api.uploads import TOO_LARGE
from core.models import ImageTask, ResumableUpload
from core.resumable import new_piece_name
from tests import images
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(90)

TUS = {"Tus-Resumable": "1.0.0"}
# The test stack leaves TUS_EXPIRY_SECONDS at its default.
DEFAULT_TUS_EXPIRY_SECONDS = 24 * 3600
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**fields: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in fields.items())


async def create(client: httpx.AsyncClient, length: int, **fields: str) -> httpx.Response:
    headers = {**TUS, "Upload-Length": str(length)}
    if fields:
        headers["Upload-Metadata"] = metadata(**fields)
    return await client.post("/files/", headers=headers)


async def patch(client: httpx.AsyncClient, location: str, offset: int, data: bytes, **headers: str):
    return await client.patch(
        location, content=data, headers={**PATCH, "Upload-Offset": str(offset), **headers}
    )


def pieces_on_disk(uploads_dir: Path) -> set[str]:
    folder = uploads_dir / "resumable"
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


async def test_options_announce_the_protocol_and_its_extensions(client: httpx.AsyncClient) -> None:
    answer = await client.options("/files/")
    assert answer.status_code == 204
    assert answer.headers["tus-resumable"] == "1.0.0"
    assert answer.headers["tus-version"] == "1.0.0"
    assert set(answer.headers["tus-extension"].split(",")) == {
        "creation",
        "termination",
        "expiration",
        "checksum",
    }
    assert answer.headers["tus-max-size"] == "1000000"
    assert "sha1" in answer.headers["tus-checksum-algorithm"].split(",")
    assert "POST" in answer.headers["allow"]


async def test_tuspy_uploads_an_image_that_becomes_a_task_like_post_upload(
    client: httpx.AsyncClient, api_process: str, db: AsyncSession
) -> None:
    data = images.jpeg(640, 480)
    tus = TusClient(f"{api_process}/files/")
    uploader = tus.async_uploader(
        file_stream=io.BytesIO(data),
        chunk_size=16 * 1024,
        metadata={"filename": "beach day.jpg", "preset": "thumbnail", "filetype": "image/jpeg"},
        upload_checksum=True,
    )
    await uploader.upload()
    assert uploader.offset == len(data)

    head = await client.head(uploader.url, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    task_id = int(head.headers["imagequeue-task-id"])
    task = await db.get(ImageTask, task_id)
    assert task is not None
    assert (task.filename, task.size_bytes, task.width, task.height) == ("beach day.jpg", len(data), 640, 480)
    assert task.sha256 == hashlib.sha256(data).hexdigest()
    assert task.processing["outputs"][0]["preset"] == "thumbnail"
    status = await client.get(f"/status/{task_id}")
    assert status.status_code == 200


async def test_the_final_patch_names_the_task_and_the_pieces_are_removed(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    data = images.jpeg(320, 240)
    created = await create(client, len(data), filename="a.jpg")
    assert created.status_code == 201
    assert created.headers["tus-resumable"] == "1.0.0"
    assert created.headers["upload-expires"].endswith(" GMT")
    location = created.headers["location"]
    assert location.startswith("/files/")
    before = pieces_on_disk(uploads_dir)
    half = len(data) // 2
    first = await patch(client, location, 0, data[:half])
    assert first.status_code == 204 and first.headers["upload-offset"] == str(half)
    assert "imagequeue-task-id" not in first.headers
    assert len(pieces_on_disk(uploads_dir) - before) == 1, "one stored piece per PATCH"
    last = await patch(client, location, half, data[half:])
    assert last.status_code == 204, last.text
    assert last.headers["upload-offset"] == str(len(data))
    assert int(last.headers["imagequeue-task-id"]) > 0
    assert pieces_on_disk(uploads_dir) - before == set(), "joined into the task's upload, then removed"
    again = await patch(client, location, len(data), b"")
    assert again.status_code == 409


async def test_protocol_refusals_are_clear_4xx(client: httpx.AsyncClient) -> None:
    no_version = await client.post("/files/", headers={"Upload-Length": "10"})
    assert no_version.status_code == 412
    assert no_version.headers["tus-version"] == "1.0.0"
    assert no_version.json()["detail"] == VERSION_UNSUPPORTED

    too_big = await create(client, 1_000_001)
    assert too_big.status_code == 413
    assert too_big.json()["detail"] == TOO_LARGE.format(limit=1_000_000)

    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "ten"})).status_code == 400
    assert (await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})).status_code == 400
    assert (await create(client, 0)).status_code == 400
    bad_metadata = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "10", "Upload-Metadata": "a !!!"}
    )
    assert bad_metadata.status_code == 400
    bad_preset = await create(client, 10, filename="x.jpg", preset="no-such-preset")
    assert bad_preset.status_code == 422 and "preset" in bad_preset.json()["detail"]
    misspelt = await create(client, 10, presets="thumbnail")
    assert misspelt.status_code == 422

    location = (await create(client, 100)).headers["location"]
    wrong_offset = await patch(client, location, 5, b"x")
    assert wrong_offset.status_code == 409
    assert wrong_offset.json()["detail"] == resumable.OFFSET_MISMATCH.format(sent=5, received=0)
    wrong_type = await client.patch(location, content=b"x", headers={**TUS, "Upload-Offset": "0"})
    assert wrong_type.status_code == 415
    beyond = await patch(client, location, 0, b"x" * 101)
    assert beyond.status_code == 413
    bad_checksum = await patch(client, location, 0, b"hello", **{"Upload-Checksum": "crc32 AAAA"})
    assert bad_checksum.status_code == 400
    mismatch = await patch(
        client, location, 0, b"hello", **{"Upload-Checksum": "sha1 " + base64.b64encode(b"\0" * 20).decode()}
    )
    assert mismatch.status_code == 460
    assert mismatch.json()["detail"] == resumable.CHECKSUM_MISMATCH
    good = await patch(
        client,
        location,
        0,
        b"hello",
        **{"Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"hello").digest()).decode()},
    )
    assert good.status_code == 204 and good.headers["upload-offset"] == "5"

    assert (await client.head("/files/" + "0" * 32, headers=TUS)).status_code == 404
    assert (await client.head("/files/not-an-id", headers=TUS)).status_code == 404
    assert (await patch(client, "/files/" + "0" * 32, 0, b"x")).status_code == 404


async def test_termination_removes_the_upload_and_its_pieces(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    before = pieces_on_disk(uploads_dir)
    location = (await create(client, 1000)).headers["location"]
    assert (await patch(client, location, 0, b"x" * 300)).status_code == 204
    assert len(pieces_on_disk(uploads_dir) - before) == 1
    deleted = await client.delete(location, headers=TUS)
    assert deleted.status_code == 204
    assert pieces_on_disk(uploads_dir) - before == set()
    assert (await client.head(location, headers=TUS)).status_code == 404
    assert (await client.delete(location, headers=TUS)).status_code == 404


async def test_method_override_stands_in_for_patch_and_delete(client: httpx.AsyncClient) -> None:
    location = (await create(client, 10)).headers["location"]
    patched = await client.post(
        location,
        content=b"12345",
        headers={**PATCH, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert patched.status_code == 204 and patched.headers["upload-offset"] == "5"
    deleted = await client.post(location, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204


async def test_a_bare_post_to_an_upload_is_405_with_allow_and_every_tus_answer_has_the_version(
    client: httpx.AsyncClient,
) -> None:
    """RFC 9110 asks Allow on a 405; tus asks Tus-Resumable on every answer, including those no tus
    route writes (a method no route takes, Starlette's own 405)."""
    location = (await create(client, 10)).headers["location"]

    bare = await client.post(location, headers=TUS)
    put = await client.put(location, headers=TUS)
    bad_override = await client.post(location, headers={**TUS, "X-HTTP-Method-Override": "PUT"})
    on_collection = await client.delete("/files/", headers=TUS)

    assert (bare.status_code, bare.json()) == (405, {"detail": resumable.BAD_OVERRIDE})
    assert bare.headers["allow"] == "GET, HEAD, PATCH, DELETE, OPTIONS", "POST is only a stand-in"
    assert put.status_code == 405 and put.headers["allow"] == "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
    assert on_collection.status_code == 405 and on_collection.headers["allow"] == "POST, OPTIONS"
    assert bad_override.status_code == 400
    for answer in (bare, put, bad_override, on_collection):
        assert answer.headers["tus-resumable"] == "1.0.0", answer.request.method
        assert answer.headers.get_list("tus-resumable") == ["1.0.0"], "once"
    assert "tus-resumable" not in (await client.get("/tasks")).headers, "only under /files/"


async def test_a_file_that_is_not_an_image_is_refused_by_the_final_patch(client: httpx.AsyncClient) -> None:
    data = b"this is not an image at all" * 10
    location = (await create(client, len(data), filename="notes.txt")).headers["location"]
    assert (await patch(client, location, 0, data[:100])).status_code == 204
    last = await patch(client, location, 100, data[100:])
    assert last.status_code == 415
    assert last.headers["tus-resumable"] == "1.0.0"
    assert (await client.head(location, headers=TUS)).status_code == 404, "a refused upload is gone"


async def test_the_idempotency_key_of_the_creation_is_honoured(client: httpx.AsyncClient) -> None:
    data = images.jpeg(200, 100)
    headers = {**TUS, "Upload-Length": str(len(data)), "Idempotency-Key": "tus-key-1"}
    task_ids = []
    for _ in range(2):
        location = (await client.post("/files/", headers=headers)).headers["location"]
        finished = await patch(client, location, 0, data)
        assert finished.status_code == 204
        task_ids.append(finished.headers["imagequeue-task-id"])
    assert task_ids[0] == task_ids[1]
    other = images.jpeg(201, 100)
    location = (await client.post("/files/", headers={**headers, "Upload-Length": str(len(other))})).headers[
        "location"
    ]
    refused = await patch(client, location, 0, other)
    assert refused.status_code == 422 and refused.json()["detail"] == IDEMPOTENCY_KEY_REUSED
    bad_key = await client.post("/files/", headers={**headers, "Idempotency-Key": "two words"})
    assert bad_key.status_code == 400


async def test_concurrent_patches_at_one_offset_add_the_bytes_once(client: httpx.AsyncClient) -> None:
    data = images.jpeg(300, 200)
    location = (await create(client, len(data))).headers["location"]
    answers = await asyncio.gather(*(patch(client, location, 0, data[:1000]) for _ in range(4)))
    assert sorted(answer.status_code for answer in answers) == [204, 409, 409, 409]
    head = await client.head(location, headers=TUS)
    assert head.headers["upload-offset"] == "1000"
    finished = await patch(client, location, 1000, data[1000:])
    assert finished.status_code == 204 and "imagequeue-task-id" in finished.headers


async def test_an_expired_upload_answers_410_then_is_swept_with_its_pieces(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path
) -> None:
    location = (await create(client, 1000)).headers["location"]
    assert (await patch(client, location, 0, b"x" * 10)).status_code == 204
    upload_id = location.rsplit("/", 1)[1]
    piece = (await db.get(ResumableUpload, upload_id)).pieces[0]  # type: ignore[union-attr]
    assert piece in pieces_on_disk(uploads_dir)
    await db.execute(
        update(ResumableUpload)
        .where(ResumableUpload.id == upload_id)
        .values(expires_at=ResumableUpload.created_at)
    )
    await db.commit()
    gone = await client.head(location, headers=TUS)
    assert gone.status_code == 410
    assert (await patch(client, location, 10, b"y")).status_code == 410

    async def swept() -> bool:
        return (await client.head(location, headers=TUS)).status_code == 404

    await eventually(swept, timeout=30, what="the sweep deleting the expired upload")
    assert piece not in pieces_on_disk(uploads_dir)


async def test_metadata_holding_a_nul_is_refused_in_words(client: httpx.AsyncClient) -> None:
    encoded = base64.b64encode(b"a\x00b").decode()

    refused = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "100", "Upload-Metadata": f"filename {encoded}"}
    )

    assert refused.status_code == 400, refused.text
    assert "no NUL" in refused.json()["detail"]


async def test_the_piece_limit_holds_for_a_chunked_patch_too(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    location = (await create(client, 100)).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    # As if MAX_PIECES pieces had come already (names of nothing: the termination below removes none).
    full = [f"{upload_id}-{index}" for index in range(resumable.MAX_PIECES)]
    await db.execute(update(ResumableUpload).where(ResumableUpload.id == upload_id).values(pieces=full))
    await db.commit()

    async def one_byte() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        yield b"x"

    refused = await client.patch(location, content=one_byte(), headers={**PATCH, "Upload-Offset": "0"})

    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == resumable.TOO_MANY_PIECES
    assert (await client.head(location, headers=TUS)).headers["upload-offset"] == "0"
    await client.delete(location, headers=TUS)


async def test_a_500_under_files_carries_tus_resumable_too(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    """tus asks Tus-Resumable on every answer, a server error's included. An exception no handler
    takes is answered by Starlette's outermost layer, outside the one that adds the header: here a
    stored Upload-Metadata no HTTP header can carry (not Latin-1) makes the GET answer fail to build."""
    location = (await create(client, 100, filename="a.jpg")).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    await db.execute(
        update(ResumableUpload)
        .where(ResumableUpload.id == upload_id)
        .values(metadata_header="filename \u20ac")
    )
    await db.commit()

    failed = await client.get(location, headers=TUS)

    assert failed.status_code == 500
    assert failed.headers.get_list("tus-resumable") == ["1.0.0"]
    assert failed.headers["x-content-type-options"] == "nosniff" and failed.headers["x-request-id"]
    assert failed.headers["connection"] == "close", "uvicorn closes the socket after an exception"
    await client.delete(location, headers=TUS)


async def test_a_piece_left_by_an_api_killed_mid_patch_is_swept_once_older_than_the_expiry(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path
) -> None:
    """An API process killed between storing a PATCH's piece and adding it to its upload leaves a
    stored piece no upload names; once older than TUS_EXPIRY_SECONDS (its upload has expired by
    then) the sweep removes it. A younger one, or an old one an upload still names, stays."""
    location = (await create(client, 1000)).headers["location"]
    assert (await patch(client, location, 0, b"x" * 10)).status_code == 204
    upload_id = location.rsplit("/", 1)[1]
    named = (await db.get(ResumableUpload, upload_id)).pieces[0]  # type: ignore[union-attr]
    folder = uploads_dir / "resumable"
    # Left as the killed process leaves it: stored under a piece's name, in no row.
    orphan, young_orphan = (folder / new_piece_name() for _ in range(2))
    orphan.write_bytes(b"y" * 10)
    young_orphan.write_bytes(b"z" * 10)
    long_ago = time.time() - 2 * DEFAULT_TUS_EXPIRY_SECONDS
    for path in (orphan, folder / named):
        os.utime(path, (long_ago, long_ago))

    async def swept() -> bool:
        return not orphan.exists()

    await eventually(swept, timeout=30, what="the sweep removing the orphaned piece")
    assert young_orphan.exists(), "younger than the expiry: its upload may still add it"
    assert (folder / named).exists(), "an upload names it"
    resumed = await patch(client, location, 10, b"x" * 10)
    assert resumed.status_code == 204 and resumed.headers["upload-offset"] == "20"
    await client.delete(location, headers=TUS)
    young_orphan.unlink()
