"""The `s3` storage backend end to end: a real API process and a real worker process with
STORAGE_BACKEND=s3, on a real S3 server (SeaweedFS), a database of this module's own
(tests/s3/stack.py), and the same promises as tests/test_nats_storage.py makes for `nats`.

What must hold: stored files live in the bucket under S3_PREFIX, never in the folders (scratch space
only, left empty); a file above the part size goes up in parts; outputs and originals are served
from the bucket, streamed, with ETag, Range and HEAD, or (S3_PRESIGNED_DOWNLOADS) as a 302 that real
clients follow; deleting a task, retention and a missing object behave as with local files; the
sweep aborts multipart uploads a killed process left. S3 killed: tests/s3/test_storage_outage.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.routes.originals import ORIGINAL_NOT_FOUND
from api.routes.tasks import PROCESSED_NOT_FOUND
from core.db import make_engine, make_sessionmaker
from core.models import ImageTask
from core.resumable import new_piece_name
from core.storage import Area, Folders
from core.storage.s3 import S3Storage
from devstack.stack import running_api
from tests import images
from tests.nats_stack import scratch_files, upload
from tests.ranges import assert_ranges_served
from tests.s3.stack import PART_SIZE, PREFIX, S3Stack, object_keys
from tests.waiting import final_status, task_row_when
from worker.consumer import INPUT_MISSING
from worker.retention import purge_expired

pytestmark = pytest.mark.timeout(90)


def noise_png(width: int, height: int) -> bytes:
    """Random pixels: a PNG that does not compress (3 bytes a pixel)."""
    return images.encode(Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)), "PNG")


async def stored(s3: Any, stack: S3Stack, area: Area, name: str) -> bytes:
    answer = await s3.get_object(Bucket=stack.bucket, Key=stack.key(area, name))
    async with answer["Body"] as body:
        return await body.read()


async def exists(s3: Any, stack: S3Stack, area: Area, name: str) -> bool:
    listing = await s3.list_objects_v2(Bucket=stack.bucket, Prefix=stack.key(area, name))
    return bool(listing.get("Contents"))


@pytest.fixture(scope="module")
def big_task(s3_stack: S3Stack, s3_worker: None) -> dict[str, Any]:
    """A 6.3 MB upload (above the 5 MiB part size: two parts) with four outputs, processed."""

    async def make() -> dict[str, Any]:
        data = noise_png(1450, 1450)
        outputs = {"same": "default", "grey": "grayscale", "thumb": "thumbnail", "webp": "webp"}
        async with httpx.AsyncClient(base_url=s3_stack.api_url, timeout=60) as http:
            task_id = await upload(http, data, "noise.png", outputs=json.dumps(outputs))
            status = await final_status(http, task_id, timeout=80)
        return {"data": data, "status": status, "outputs": outputs}

    return asyncio.run(make())


async def test_uploads_and_outputs_live_in_the_bucket_and_are_served_from_it(
    s3_stack: S3Stack, big_task: dict[str, Any], api: httpx.AsyncClient, db: AsyncSession, s3: Any
) -> None:
    assert (await api.get("/ready")).json() == {
        "status": "ready",
        "database": "ok",
        "nats": "ok",
        "storage": "ok",
    }
    status, data = big_task["status"], big_task["data"]
    assert len(data) > PART_SIZE
    assert status["status"] == "done", status
    task_outputs = {output["name"]: output for output in status["outputs"]}
    assert sorted(task_outputs) == sorted(big_task["outputs"])
    for name, expected_type, expected_format in (
        ("same", "image/png", "PNG"),
        ("grey", "image/png", "PNG"),
        ("thumb", "image/png", "PNG"),
        ("webp", "image/webp", "WEBP"),
    ):
        response = await api.get(task_outputs[name]["url"])
        assert response.status_code == 200, (name, response.text)
        assert response.headers["content-type"] == expected_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert int(response.headers["content-length"]) == len(response.content)
        file = task_outputs[name]["url"].rsplit("/", 1)[1]
        assert response.content == await stored(s3, s3_stack, Area.PROCESSED, file), name
        with Image.open(io.BytesIO(response.content)) as image:
            image.load()
            assert image.format == expected_format
            assert image.size == (task_outputs[name]["width"], task_outputs[name]["height"])

    input_name = await db.scalar(select(ImageTask.input_name).where(ImageTask.id == status["task_id"]))
    head = await s3.head_object(Bucket=s3_stack.bucket, Key=s3_stack.key(Area.UPLOADS, input_name or ""))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-2"), f"not a two-part multipart upload: {head['ETag']}"
    original = await api.get(f"/tasks/{status['task_id']}/original")
    assert (original.status_code, original.headers["content-type"]) == (200, "image/png")
    assert original.content == data
    assert all(key.startswith(PREFIX) for key in await object_keys(s3, s3_stack.bucket))
    assert scratch_files(s3_stack.folders) == [], "the folders are scratch space, left empty"
    uploads = await s3.list_multipart_uploads(Bucket=s3_stack.bucket, Prefix=PREFIX)
    assert not uploads.get("Uploads"), "a finished put left a multipart upload open"


async def test_ranges_etag_and_head_on_stored_objects(
    big_task: dict[str, Any], api: httpx.AsyncClient
) -> None:
    path = f"/tasks/{big_task['status']['task_id']}/original"
    await assert_ranges_served(api, path, big_task["data"])
    assert (await api.get(path)).headers["last-modified"].endswith(" GMT")


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
def test_curl_resumes_a_download_with_a_range(
    big_task: dict[str, Any], s3_stack: S3Stack, tmp_path: Path
) -> None:
    """`curl -C -` continues a download cut short: it asks for the rest with a Range."""
    data = big_task["data"]
    target = tmp_path / "partial.png"
    target.write_bytes(data[:12345])
    url = f"{s3_stack.api_url}/tasks/{big_task['status']['task_id']}/original"
    subprocess.run(["curl", "-sSf", "-C", "-", "-o", str(target), url], check=True, timeout=60)
    assert target.read_bytes() == data


async def test_presigned_downloads_redirect_and_real_clients_follow(
    s3_stack: S3Stack, big_task: dict[str, Any], tmp_path: Path
) -> None:
    """An API with S3_PRESIGNED_DOWNLOADS on (a second one, on the same stack) answers 302."""
    status, data = big_task["status"], big_task["data"]
    env = {**s3_stack.env, "S3_PRESIGNED_DOWNLOADS": "true", "S3_PRESIGNED_EXPIRES_SECONDS": "60"}
    output_url = status["outputs"][0]["url"]
    with running_api(env, log_file=tmp_path / "presigning-api.log") as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            original = f"/tasks/{status['task_id']}/original"
            redirect = await http.get(original)
            assert redirect.status_code == 302
            location = redirect.headers["location"]
            assert location.startswith(s3_stack.seaweed.endpoint_url) and "X-Amz-Signature=" in location
            assert redirect.headers["cache-control"] == "no-store"

            followed = await http.get(original, follow_redirects=True)
            assert (followed.status_code, followed.content) == (200, data)
            assert followed.headers["content-type"] == "image/png"
            ranged = await http.get(original, headers={"Range": "bytes=10-19"}, follow_redirects=True)
            assert (ranged.status_code, ranged.content) == (206, data[10:20])
            output = await http.get(output_url, follow_redirects=True)
            assert output.status_code == 200 and output.content.startswith(b"\x89PNG")
            assert (await http.get("/processed/" + "0" * 32 + ".png")).status_code == 404
        if shutil.which("curl"):
            target = tmp_path / "via-curl.png"
            await asyncio.to_thread(
                subprocess.run,
                ["curl", "-sSfL", "-o", str(target), f"{base_url}/tasks/{status['task_id']}/original"],
                check=True,
                timeout=60,
            )
            assert target.read_bytes() == data


async def test_deleting_a_task_deletes_its_objects(
    s3_stack: S3Stack, s3_worker: None, api: httpx.AsyncClient, db: AsyncSession, s3: Any
) -> None:
    task_id = await upload(api, images.jpeg(), "gone.jpg", outputs=json.dumps({"a": "default", "b": "webp"}))
    status = await final_status(api, task_id)
    files = [output["url"].rsplit("/", 1)[1] for output in status["outputs"]]
    input_name = (await db.scalar(select(ImageTask.input_name).where(ImageTask.id == task_id))) or ""
    assert await exists(s3, s3_stack, Area.UPLOADS, input_name)

    assert (await api.delete(f"/tasks/{task_id}")).status_code == 204

    assert not await exists(s3, s3_stack, Area.UPLOADS, input_name)
    for file in files:
        assert not await exists(s3, s3_stack, Area.PROCESSED, file)
        assert (await api.get(f"/processed/{file}")).status_code == 404


async def test_a_missing_object_is_404_and_a_missing_input_fails_the_task(
    s3_stack: S3Stack, s3_worker: None, api: httpx.AsyncClient, db: AsyncSession, s3: Any
) -> None:
    task_id = await upload(api, images.jpeg(), "lost.jpg")
    status = await final_status(api, task_id)
    output = status["processed_url"].rsplit("/", 1)[1]
    task = await task_row_when(db, task_id, lambda t: t.status == "done", what="done")
    await s3.delete_object(Bucket=s3_stack.bucket, Key=s3_stack.key(Area.PROCESSED, output))
    await s3.delete_object(Bucket=s3_stack.bucket, Key=s3_stack.key(Area.UPLOADS, task.input_name))

    missing_output = await api.get(status["processed_url"])
    missing_original = await api.get(f"/tasks/{task_id}/original")

    assert (missing_output.status_code, missing_output.json()) == (404, {"detail": PROCESSED_NOT_FOUND})
    assert (missing_original.status_code, missing_original.json()) == (404, {"detail": ORIGINAL_NOT_FOUND})

    # The same input queued again (as a redelivery would be) cannot be rendered: failed, with why.
    await db.execute(
        update(ImageTask).where(ImageTask.id == task_id).values(status="pending", queued_at=None)
    )
    await db.commit()
    failed = await task_row_when(db, task_id, lambda t: t.status == "failed", what="failed")
    assert failed.error == INPUT_MISSING


def _storage(stack: S3Stack, folders: Folders) -> S3Storage:
    return S3Storage(
        folders,
        bucket=stack.bucket,
        prefix=PREFIX,
        endpoint_url=stack.seaweed.endpoint_url,
        region=stack.env["S3_REGION"],
    )


async def test_retention_deletes_old_tasks_objects(
    s3_stack: S3Stack, s3_worker: None, api: httpx.AsyncClient, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = await upload(api, images.jpeg(), "old.jpg")
    status = await final_status(api, task_id)
    output = status["processed_url"].rsplit("/", 1)[1]
    engine = make_engine(s3_stack.database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the standard chain, as a process has it
        monkeypatch.setenv(name, s3_stack.env[name])
    storage = _storage(s3_stack, s3_stack.folders)
    try:
        async with sessions() as session:
            input_name = await session.scalar(select(ImageTask.input_name).where(ImageTask.id == task_id))
            await session.execute(
                update(ImageTask)
                .where(ImageTask.id == task_id)
                .values(finished_at=datetime.now(UTC) - timedelta(days=30))
            )
            await session.commit()
        await storage.connect(asyncio.Event())

        assert await purge_expired(sessions, storage, timedelta(days=7)) >= 1
    finally:
        await storage.close()
        await engine.dispose()

    assert (await api.get(f"/status/{task_id}")).status_code == 404
    assert not await exists(s3, s3_stack, Area.UPLOADS, input_name or "")
    assert not await exists(s3, s3_stack, Area.PROCESSED, output)


async def test_the_sweep_aborts_multipart_uploads_cut_short_and_keeps_the_rest(
    s3_stack: S3Stack, api: httpx.AsyncClient, db: AsyncSession, s3: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """As a process killed mid-put leaves one: a multipart upload begun, never completed."""
    data = images.jpeg()
    task_id = await upload(api, data, "whole.jpg")
    input_name = (await db.scalar(select(ImageTask.input_name).where(ImageTask.id == task_id))) or ""
    cut_short = s3_stack.key(Area.UPLOADS, "f" * 32 + ".jpg")
    begun = await s3.create_multipart_upload(Bucket=s3_stack.bucket, Key=cut_short)
    await s3.upload_part(
        Bucket=s3_stack.bucket, Key=cut_short, UploadId=begun["UploadId"], PartNumber=1, Body=b"x" * 1000
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, s3_stack.env[name])
    # Folders of its own: an age of 0 would take the module's processes' temporary files too.
    storage = _storage(s3_stack, Folders(tmp_path / "u", tmp_path / "p"))
    storage.folders.ensure_dirs()
    try:
        await storage.connect(asyncio.Event())
        assert await storage.remove_stale(3600) == 0, "a young upload may be a put under way"

        assert await storage.remove_stale(0) >= 1
    finally:
        await storage.close()

    listing = await s3.list_multipart_uploads(Bucket=s3_stack.bucket, Prefix=PREFIX)
    assert begun["UploadId"] not in {upload["UploadId"] for upload in listing.get("Uploads") or ()}
    assert await stored(s3, s3_stack, Area.UPLOADS, input_name) == data


async def test_presigned_post_object_size_and_read_range_for_direct_uploads(
    s3_stack: S3Stack, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What direct-to-storage uploads build on: a browser-style POST form capped in size and type,
    then the object's size and first bytes read back without fetching it whole."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, s3_stack.env[name])
    storage = _storage(s3_stack, Folders(tmp_path / "u", tmp_path / "p"))
    data = images.png()
    name, too_big = "d" * 32 + ".png", "e" * 32 + ".png"
    try:
        await storage.connect(asyncio.Event())
        url, fields = await storage.presigned_post(
            Area.UPLOADS, name, max_bytes=len(data), content_type="image/png", expires_seconds=60
        )
        big_url, big_fields = await storage.presigned_post(
            Area.UPLOADS, too_big, max_bytes=len(data) - 1, content_type="image/png", expires_seconds=60
        )
        async with httpx.AsyncClient(timeout=30) as http:
            posted = await http.post(url, data=fields, files={"file": ("x.png", data, "image/png")})
            refused = await http.post(big_url, data=big_fields, files={"file": ("x.png", data, "image/png")})

        assert posted.status_code in (200, 201, 204), posted.text
        assert 400 <= refused.status_code < 500, refused.text
        assert await storage.object_size(Area.UPLOADS, name) == len(data)
        assert await storage.object_size(Area.UPLOADS, too_big) is None
        assert await storage.read_range(Area.UPLOADS, name, 0, 8) == data[:8]
        assert await storage.read_range(Area.UPLOADS, name, len(data) - 4, 100) == data[-4:]
        await storage.remove(Area.UPLOADS, [name, too_big])
        assert await storage.object_size(Area.UPLOADS, name) is None
    finally:
        await storage.close()


async def test_a_resumable_upload_keeps_its_pieces_as_objects_and_becomes_a_task(
    api: httpx.AsyncClient, s3: Any, s3_stack: S3Stack
) -> None:
    tus = {"Tus-Resumable": "1.0.0"}
    data = images.jpeg(800, 600)
    created = await api.post("/files/", headers={**tus, "Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    first = await api.patch(
        location,
        content=data[:5000],
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert first.status_code == 204, first.text
    resumable_prefix = s3_stack.key(Area.RESUMABLE, "x")[: -len("x")]
    pieces = {key for key in await object_keys(s3, s3_stack.bucket) if key.startswith(resumable_prefix)}
    assert len(pieces) == 1, "the piece is an object in the bucket"
    assert scratch_files(s3_stack.folders) == []

    finished = await api.patch(
        location,
        content=data[5000:],
        headers={**tus, "Upload-Offset": "5000", "Content-Type": "application/offset+octet-stream"},
    )
    assert finished.status_code == 204, finished.text
    task_id = finished.headers["imagequeue-task-id"]
    original = await api.get(f"/tasks/{task_id}/original")
    assert original.status_code == 200 and original.content == data
    left = {key for key in await object_keys(s3, s3_stack.bucket) if key.startswith(resumable_prefix)}
    assert left == set(), "the pieces are removed once joined"


async def test_stored_before_lists_pieces_by_their_last_modified(
    s3_stack: S3Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the sweep of orphaned resumable pieces reads (core.resumable.remove_orphan_pieces)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, s3_stack.env[name])
    storage = _storage(s3_stack, Folders(tmp_path / "u", tmp_path / "p"))
    storage.folders.ensure_dirs()
    piece = new_piece_name()
    try:
        await storage.connect(asyncio.Event())
        temp = storage.folders.temp_upload_path()
        temp.write_bytes(b"a piece")
        await storage.keep(Area.RESUMABLE, temp, piece)

        assert piece not in await storage.stored_before(Area.RESUMABLE, 3600, limit=100)
        assert piece in await storage.stored_before(Area.RESUMABLE, 0, limit=100)
        # A page at a time, each call the next page: a second piece is seen by a later call.
        second = new_piece_name()
        temp = storage.folders.temp_upload_path()
        temp.write_bytes(b"another piece")
        await storage.keep(Area.RESUMABLE, temp, second)
        seen: set[str] = set()
        for _ in range(50):
            page = await storage.stored_before(Area.RESUMABLE, 0, limit=1)
            assert len(page) <= 1
            seen.update(page)
            if {piece, second} <= seen:
                break
        assert {piece, second} <= seen
        await storage.remove(Area.RESUMABLE, [piece, second])
        assert piece not in await storage.stored_before(Area.RESUMABLE, 0, limit=100)
    finally:
        await storage.close()
