"""Resumable uploads that survive what they are for: a connection dropped mid-PATCH, a client process
killed mid-upload, and an upload begun on one API replica and finished on another. Two API processes
of their own on the session's PostgreSQL and NATS, with a few-MB MAX_UPLOAD_BYTES and API keys on
(per-key limits); the nats backend in tests/test_nats_storage.py's way, with a stack of its own."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession
from tusclient.client import TusClient

from api.routes import resumable
from core.models import ImageTask
from devstack.stack import LocalServers, running_api
from tests import images
from tests.api.test_resumable import TUS, create, patch
from tests.nats_stack import running_nats_stack, scratch_files
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)

API_KEY = "resumable-key-0123456789"
OTHER_KEY = "resumable-other-0123456789"
KEYED = {"X-API-Key": API_KEY}
MAX_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def replicas(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """Two API processes sharing the database, NATS and (local backend) the folders."""
    env = {
        **stack_env,
        "MAX_UPLOAD_BYTES": str(MAX_BYTES),
        "API_KEYS": f"{API_KEY},{OTHER_KEY}",
        "TUS_MAX_OPEN_UPLOADS": "3",
    }
    logs = tmp_path_factory.mktemp("resumable-replicas")
    with (
        running_api(env, log_file=logs / "a.log") as first,
        running_api(env, log_file=logs / "b.log") as second,
    ):
        yield first, second


def noisy_png(width: int = 1200, height: int = 900) -> bytes:
    """A few MB that do not compress: random pixels."""
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    return images.encode(image, "PNG")


async def offset_of(client: httpx.AsyncClient, location: str) -> int:
    head = await client.head(location, headers={**TUS, **KEYED})
    assert head.status_code == 200, head.text
    return int(head.headers["upload-offset"])


async def send_part_and_drop(base_url: str, location: str, data: bytes, sent: int) -> None:
    """A PATCH announcing all of `data`, of which only `sent` bytes go before the socket closes."""
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {url.host}\r\nTus-Resumable: 1.0.0\r\n"
        f"X-API-Key: {API_KEY}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data[:sent])
    await writer.drain()
    writer.transport.abort()  # a reset, as a phone losing its network would leave it
    del reader


async def test_a_dropped_connection_keeps_what_arrived_and_the_upload_resumes_to_a_task(
    replicas: tuple[str, str], db: AsyncSession
) -> None:
    base_url = replicas[0]
    data = noisy_png()
    assert 2_000_000 < len(data) <= MAX_BYTES
    async with httpx.AsyncClient(base_url=base_url, headers=KEYED, timeout=30) as client:
        location = (await create(client, len(data), filename="noise.png")).headers["location"]
        await send_part_and_drop(base_url, location, data, 1_500_000)

        async def kept() -> bool:
            return await offset_of(client, location) > 0

        await eventually(kept, timeout=20, what="the bytes of the dropped PATCH kept")
        offset = await offset_of(client, location)
        assert offset <= 1_500_000

        tus = TusClient(f"{base_url}/files/", headers=KEYED)
        uploader = tus.async_uploader(
            file_stream=io.BytesIO(data), url=f"{base_url}{location}", chunk_size=1 << 20
        )
        assert uploader.offset == offset, "tuspy asks HEAD and resumes where the server is"
        await uploader.upload()
        head = await client.head(location, headers=TUS)
        task = await db.get(ImageTask, int(head.headers["imagequeue-task-id"]))
        assert task is not None and task.sha256 == hashlib.sha256(data).hexdigest()
        assert (task.width, task.height, task.filename) == (1200, 900, "noise.png")


CHILD = textwrap.dedent(
    """
    import sys, time
    from tusclient.client import TusClient
    url, path, key = sys.argv[1:]
    stream = open(path, "rb")
    uploader = TusClient(url, headers={"X-API-Key": key}).uploader(file_stream=stream, chunk_size=256 * 1024)
    uploader.set_url(uploader.create_url())
    uploader.offset = 0
    print(uploader.url, flush=True)
    while uploader.offset < uploader.get_file_size():
        uploader.upload_chunk()  # tuspy's own step; slowed so the test can kill it midway
        time.sleep(0.2)
    """
)


async def test_a_client_process_killed_mid_upload_is_resumed_by_another_on_the_other_replica(
    replicas: tuple[str, str], db: AsyncSession, tmp_path: Path
) -> None:
    first, second = replicas
    data = noisy_png(1000, 800)
    source = tmp_path / "photo.png"
    source.write_bytes(data)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, f"{first}/files/", str(source), API_KEY, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        url = (await child.stdout.readline()).decode()
        location = httpx.URL(url.strip()).path
        async with httpx.AsyncClient(base_url=second, headers=KEYED, timeout=30) as client:

            async def under_way() -> bool:
                return await offset_of(client, location) >= 512 * 1024

            await eventually(under_way, timeout=30, what="the child's upload under way")
            child.kill()
            await child.wait()
            offset = await offset_of(client, location)
            assert 0 < offset < len(data), "killed before the end"

            # Resumed against the second replica, which never saw the first PATCHes.
            tus = TusClient(f"{second}/files/", headers=KEYED)
            # A stream of our own: tuspy leaves the file it opens for `file_path` unclosed.
            uploader = tus.async_uploader(
                file_stream=io.BytesIO(source.read_bytes()), url=f"{second}{location}", chunk_size=1 << 20
            )
            assert uploader.offset == offset
            await uploader.upload()
            head = await client.head(location, headers=TUS)
            assert head.headers["upload-offset"] == str(len(data))
        task = await db.get(ImageTask, int(head.headers["imagequeue-task-id"]))
        assert task is not None and task.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_each_api_key_sees_only_its_uploads_and_holds_a_bounded_number(
    replicas: tuple[str, str],
) -> None:
    async with httpx.AsyncClient(base_url=replicas[1], timeout=30) as client:
        other = {"X-API-Key": OTHER_KEY}
        assert (await client.post("/files/", headers={**TUS, "Upload-Length": "10"})).status_code == 401
        made = []
        for _ in range(3):
            answer = await client.post("/files/", headers={**TUS, **other, "Upload-Length": "10"})
            assert answer.status_code == 201
            made.append(answer.headers["location"])
        refused = await client.post("/files/", headers={**TUS, **other, "Upload-Length": "10"})
        assert refused.status_code == 429
        assert refused.json()["detail"] == resumable.TOO_MANY_OPEN.format(count=3, limit=3)
        # Another key's upload is answered as missing.
        assert (await client.head(made[0], headers={**TUS, **KEYED})).status_code == 404
        assert (await client.delete(made[0], headers={**TUS, **KEYED})).status_code == 404
        assert (await client.delete(made[0], headers={**TUS, **other})).status_code == 204
        assert (
            await client.post("/files/", headers={**TUS, **other, "Upload-Length": "10"})
        ).status_code == 201


async def test_the_nats_backend_keeps_the_pieces_in_its_bucket(
    servers: LocalServers, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running_nats_stack(servers, tmp_path_factory.mktemp("resumable-nats")) as stack:
        data = images.jpeg(800, 600)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
            location = (await create(client, len(data), filename="n.jpg")).headers["location"]
            assert (await patch(client, location, 0, data[:5000])).status_code == 204
            assert scratch_files(stack.folders) == [], "pieces are objects, not files"
            finished = await patch(client, location, 5000, data[5000:])
            assert finished.status_code == 204, finished.text
            task_id = finished.headers["imagequeue-task-id"]
            original = await client.get(f"/tasks/{task_id}/original")
            assert original.status_code == 200 and original.content == data
            assert scratch_files(stack.folders) == []
