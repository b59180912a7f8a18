"""The `nats` storage backend end to end: a real API process and a real worker process with
STORAGE_BACKEND=nats, on a NATS server and a database of this module's own (tests/nats_stack.py: the
session's API relays none of these rows).

What must hold: stored files live in the buckets, never in the folders (scratch space only, left
empty); outputs and originals are served from the buckets, streamed, with their type; deleting a
task, retention and a missing object behave as with local files; a file store outage costs a
worker's task no attempt. NATS stopped altogether: tests/faults/test_nats_storage_outage.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.routes.originals import ORIGINAL_NOT_FOUND
from api.routes.tasks import PROCESSED_NOT_FOUND
from config import get_settings
from core import queue
from core.db import make_driver_pool, make_engine, make_sessionmaker
from core.models import ImageTask
from core.resumable import new_piece_name
from core.storage import Area, Folders
from core.storage.nats import BUCKETS, NatsStorage
from devstack.stack import LocalServers
from tests import images
from tests.database import session_on
from tests.nats_stack import NatsStack, running_nats_stack, running_worker, scratch_files, upload
from tests.ranges import assert_ranges_served
from tests.waiting import final_status, task_row_when
from worker.consumer import INPUT_MISSING, TaskPolicy, TaskProcessor
from worker.metrics import WorkerMetrics
from worker.pool import RenderPool
from worker.render_job import render_settings
from worker.retention import purge_expired

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def nats_stack(servers: LocalServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsStack]:
    with running_nats_stack(servers, tmp_path_factory.mktemp("nats-storage")) as stack:
        yield stack


@pytest.fixture(scope="module")
def nats_worker(nats_stack: NatsStack) -> Iterator[None]:
    with running_worker(nats_stack):
        yield


@pytest.fixture
async def api(nats_stack: NatsStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=nats_stack.api_url, timeout=30) as http:
        yield http


@pytest.fixture
async def db(nats_stack: NatsStack) -> AsyncIterator[AsyncSession]:
    async with session_on(nats_stack.database_url) as session:
        yield session


@pytest.fixture
async def buckets(nats_stack: NatsStack) -> AsyncIterator[dict[Area, ObjectStore]]:
    """The two buckets as the test's own NATS connection sees them (the API has created them)."""
    nc = NATS()
    await nc.connect(nats_stack.nats.url)
    js = nc.jetstream()
    yield {area: await js.object_store(bucket) for area, bucket in BUCKETS.items()}
    await nc.close()


def noise_png(width: int, height: int) -> bytes:
    """Random pixels: a PNG that does not compress, so it spans several 128 KiB chunks."""
    return images.encode(Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)), "PNG")


async def test_a_file_store_outage_gives_the_task_back_at_no_attempts_cost(
    nats_stack: NatsStack, api: httpx.AsyncClient, db: AsyncSession
) -> None:
    """Run in this process, before the module's worker starts, so the message comes to this test: a
    worker whose object store connection is down naks the task and does not count the attempt."""
    task_id = await upload(api, images.jpeg(), "outage.jpg")
    nc = await queue.connect(nats_stack.nats.url, name="test-worker")
    js = nc.jetstream()
    settings = get_settings()
    storage = NatsStorage(nats_stack.folders, nats_stack.nats.url, replicas=1, client_name="test-storage")
    database = await make_driver_pool(nats_stack.database_url, max_size=2)
    pool = RenderPool("threads", 1, max_pixels=settings.max_image_pixels)
    processor = TaskProcessor(
        driver_pool=database,
        storage=storage,  # not connected yet: every call raises StorageUnavailable
        pool=pool,
        metrics=WorkerMetrics(),
        render=render_settings(settings),
        policy=TaskPolicy(
            ack_wait_seconds=5,
            max_attempts=3,
            retry_delay_seconds=0.2,
            heavy_render_pixels=settings.heavy_render_pixels,
            render_timeout_seconds=settings.render_timeout_seconds,
        ),
    )
    try:
        await queue.ensure_consumer(js, queue.ConsumerPolicy(ack_wait_seconds=5))
        subscription = await js.pull_subscribe_bind(queue.DURABLE, queue.STREAM)
        [first] = await subscription.fetch(1, timeout=10)
        assert queue.parse_task_id(first.data) == task_id
        await processor.handle(first)
        given_back = await task_row_when(db, task_id, lambda t: t.status == "pending", what="given back")
        assert given_back.attempts == 0, "a storage outage must not cost an attempt"

        await storage.connect(asyncio.Event())
        [again] = await subscription.fetch(1, timeout=10)
        assert queue.parse_task_id(again.data) == task_id and again.metadata.num_delivered == 2
        await processor.handle(again)
        done = await task_row_when(db, task_id, lambda t: t.status in ("done", "failed"), what="final")
        assert (done.status, done.attempts, done.error) == ("done", 1, None)
    finally:
        pool.shutdown()
        await storage.close()
        await database.close()
        await nc.close()


async def test_uploads_and_outputs_live_in_the_buckets_and_are_served_from_them(
    nats_stack: NatsStack, nats_worker: None, api: httpx.AsyncClient, buckets: dict[Area, ObjectStore]
) -> None:
    data = noise_png(300, 300)  # about 270 KB: three chunks
    outputs = {"same": "default", "grey": "grayscale", "thumb": "thumbnail", "webp": "webp"}
    task_id = await upload(api, data, "noise.png", outputs=json.dumps(outputs))

    status = await final_status(api, task_id)

    assert status["status"] == "done", status
    task_outputs = {output["name"]: output for output in status["outputs"]}
    assert sorted(task_outputs) == sorted(outputs)
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
        stored = await buckets[Area.PROCESSED].get(task_outputs[name]["url"].rsplit("/", 1)[1])
        assert response.content == stored.data, name
        with Image.open(io.BytesIO(response.content)) as image:
            image.load()
            assert image.format == expected_format
            assert image.size == (task_outputs[name]["width"], task_outputs[name]["height"])
    assert (await buckets[Area.PROCESSED].get_info(status["outputs"][0]["url"].rsplit("/", 1)[1])).chunks > 1

    original = await api.get(f"/tasks/{task_id}/original")
    assert (original.status_code, original.headers["content-type"]) == (200, "image/png")
    assert original.content == data
    await assert_ranges_served(api, f"/tasks/{task_id}/original", data)  # cut from the chunks
    assert scratch_files(nats_stack.folders) == [], "the folders are scratch space, left empty"


async def test_deleting_a_task_deletes_its_objects(
    nats_worker: None, api: httpx.AsyncClient, db: AsyncSession, buckets: dict[Area, ObjectStore]
) -> None:
    task_id = await upload(api, images.jpeg(), "gone.jpg", outputs=json.dumps({"a": "default", "b": "webp"}))
    status = await final_status(api, task_id)
    files = [output["url"].rsplit("/", 1)[1] for output in status["outputs"]]
    input_name = (await db.scalar(select(ImageTask.input_name).where(ImageTask.id == task_id))) or ""

    assert (await api.delete(f"/tasks/{task_id}")).status_code == 204

    with pytest.raises(ObjectNotFoundError):
        await buckets[Area.UPLOADS].get_info(input_name)
    for file in files:
        with pytest.raises(ObjectNotFoundError):
            await buckets[Area.PROCESSED].get_info(file)
        assert (await api.get(f"/processed/{file}")).status_code == 404


async def test_a_missing_object_is_404_and_a_missing_input_fails_the_task(
    nats_worker: None, api: httpx.AsyncClient, db: AsyncSession, buckets: dict[Area, ObjectStore]
) -> None:
    task_id = await upload(api, images.jpeg(), "lost.jpg")
    status = await final_status(api, task_id)
    output = status["processed_url"].rsplit("/", 1)[1]
    task = await task_row_when(db, task_id, lambda t: t.status == "done", what="done")
    await buckets[Area.PROCESSED].delete(output)
    await buckets[Area.UPLOADS].delete(task.input_name)

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


async def test_retention_deletes_old_tasks_objects(
    nats_stack: NatsStack, nats_worker: None, api: httpx.AsyncClient, buckets: dict[Area, ObjectStore]
) -> None:
    task_id = await upload(api, images.jpeg(), "old.jpg")
    status = await final_status(api, task_id)
    output = status["processed_url"].rsplit("/", 1)[1]
    engine = make_engine(nats_stack.database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    storage = NatsStorage(nats_stack.folders, nats_stack.nats.url, replicas=1, client_name="test-retention")
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
    with pytest.raises(ObjectNotFoundError):
        await buckets[Area.UPLOADS].get_info(input_name or "")
    with pytest.raises(ObjectNotFoundError):
        await buckets[Area.PROCESSED].get_info(output)


async def test_chunks_of_a_put_cut_short_are_purged_and_whole_objects_kept(
    nats_stack: NatsStack, api: httpx.AsyncClient, db: AsyncSession, tmp_path: Path
) -> None:
    """As a process killed mid-put leaves them: chunks on a subject that no meta names."""
    data = images.jpeg()
    task_id = await upload(api, data, "whole.jpg")
    input_name = await db.scalar(select(ImageTask.input_name).where(ImageTask.id == task_id))
    bucket = BUCKETS[Area.UPLOADS]
    stream, orphan = f"OBJ_{bucket}", f"$O.{bucket}.C.cut-short-{uuid.uuid4().hex}"
    nc = await queue.connect(nats_stack.nats.url, name="test-orphans")
    # Folders of its own: an age of 0 would take the module's processes' temporary files too.
    storage = NatsStorage(
        Folders(tmp_path / "u", tmp_path / "p"), nats_stack.nats.url, replicas=1, client_name="test-sweep"
    )
    storage.folders.ensure_dirs()
    try:
        js = nc.jetstream()
        await js.publish(orphan, b"the first 128 KiB of an image")
        await storage.connect(asyncio.Event())

        assert await storage.remove_stale(0) >= 1

        assert not (await js.stream_info(stream, subjects_filter=orphan)).state.subjects
        whole = await (await js.object_store(bucket)).get(input_name or "")
        assert whole.data == data
    finally:
        await storage.close()
        await nc.close()


async def test_stored_before_lists_pieces_by_the_age_their_meta_gives(
    nats_stack: NatsStack, tmp_path: Path
) -> None:
    """What the sweep of orphaned resumable pieces reads (core.resumable.remove_orphan_pieces)."""
    storage = NatsStorage(
        Folders(tmp_path / "u", tmp_path / "p"), nats_stack.nats.url, replicas=1, client_name="test-ages"
    )
    storage.folders.ensure_dirs()
    piece = new_piece_name()
    try:
        await storage.connect(asyncio.Event())
        temp = storage.folders.temp_upload_path()
        temp.write_bytes(b"a piece")
        await storage.keep(Area.RESUMABLE, temp, piece)

        assert piece not in await storage.stored_before(Area.RESUMABLE, 3600, limit=100)
        assert piece in await storage.stored_before(Area.RESUMABLE, 0, limit=100)
        await storage.remove(Area.RESUMABLE, [piece])
        assert piece not in await storage.stored_before(Area.RESUMABLE, 0, limit=100)
    finally:
        await storage.close()
