"""POST /upload against the real API process, PostgreSQL and NATS JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

import httpx
import nats
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api import uploads
from api.routes import tasks
from core import queue
from core.formats import UNSUPPORTED_MESSAGE, more_frames_than_message
from core.models import ImageTask
from core.storage import is_stored_name
from tests import images
from tests.waiting import eventually


def stored_files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


async def upload(client: httpx.AsyncClient, data: bytes, name: str = "photo.jpg", **kwargs) -> httpx.Response:
    return await client.post("/upload", files={"file": (name, data, "image/jpeg")}, **kwargs)


async def test_upload_answers_the_documented_fields_and_records_the_task(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path
) -> None:
    data = images.jpeg(320, 240)
    response = await upload(client, data, "holiday.jpg")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"task_id", "filename", "message", "status_url", "result_url", "ignored_fields"}
    assert body["ignored_fields"] == []
    assert body["filename"] == "holiday.jpg"
    assert body["message"] == tasks.UPLOAD_ACCEPTED
    assert body["status_url"] == f"/status/{body['task_id']}"
    assert body["result_url"] == f"/result/{body['task_id']}"

    task = await db.get(ImageTask, body["task_id"])
    assert task is not None
    assert (task.status, task.content_type, task.size_bytes) == ("pending", "image/jpeg", len(data))
    assert (task.width, task.height) == (320, 240)
    assert task.sha256 == hashlib.sha256(data).hexdigest()
    assert task.queued_at is not None, "the request publishes the task itself when NATS is up"
    assert is_stored_name(task.input_name) and task.input_name.endswith(".jpg")
    assert (uploads_dir / task.input_name).read_bytes() == data


async def test_the_queue_message_carries_only_the_task_id(
    client: httpx.AsyncClient, stack_env: dict[str, str]
) -> None:
    response = await upload(client, images.png(), "tiny.png")
    task_id = response.json()["task_id"]

    nc = await nats.connect(stack_env["NATS_URL"])
    try:
        js = nc.jetstream()
        message = await js.get_last_msg(queue.STREAM, queue.SUBJECT)
    finally:
        await nc.close()
    assert message.data == str(task_id).encode()
    assert message.headers is not None
    assert message.headers.get("Nats-Msg-Id") == queue.message_id(task_id, 0)


async def test_a_browser_post_is_sent_to_the_result_page(client: httpx.AsyncClient) -> None:
    response = await upload(client, images.jpeg(), headers={"Accept": "text/html,application/xhtml+xml"})

    assert response.status_code == 303
    assert response.headers["location"].startswith("/result/")


async def test_the_format_comes_from_the_bytes_not_the_name(
    client: httpx.AsyncClient, db: AsyncSession
) -> None:
    response = await upload(client, images.png(), "looks-like.jpg")

    assert response.status_code == 200
    task = await db.get(ImageTask, response.json()["task_id"])
    assert task is not None
    assert task.content_type == "image/png"
    assert task.input_name.endswith(".png")


@pytest.mark.parametrize(
    ("name", "data", "status", "detail"),
    [
        ("empty.jpg", b"", 400, uploads.EMPTY_FILE),
        ("page.jpg", b"<html><body>not an image</body></html>", 415, UNSUPPORTED_MESSAGE),
        ("notes.jpg", b"just some text\n" * 20, 415, UNSUPPORTED_MESSAGE),
        (
            "vector.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10"/></svg>',
            415,
            UNSUPPORTED_MESSAGE,
        ),
        ("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", 415, UNSUPPORTED_MESSAGE),
        ("icon.ico", images.encode(images.photo(30, 20), "ICO"), 415, UNSUPPORTED_MESSAGE),
        ("print.eps", images.encode(images.photo(30, 20), "EPS"), 415, UNSUPPORTED_MESSAGE),
        (
            "bomb.png",
            images.png_claiming(30000, 30000),
            422,
            "Image has 900,000,000 pixels; the limit is 40,000,000 pixels.",
        ),
    ],
)
async def test_refused_files_get_a_clear_answer_and_leave_nothing_behind(
    client: httpx.AsyncClient, uploads_dir: Path, name: str, data: bytes, status: int, detail: str
) -> None:
    before = stored_files(uploads_dir)

    response = await upload(client, data, name)

    assert response.status_code == status
    assert response.json() == {"detail": detail}
    assert stored_files(uploads_dir) == before


async def test_an_upload_over_the_limit_gets_413_and_leaves_nothing(
    client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    before = stored_files(uploads_dir)
    too_big = images.jpeg() + b"\0" * 1_100_000

    response = await upload(client, too_big)

    assert response.status_code == 413
    assert response.json() == {"detail": uploads.TOO_LARGE.format(limit=1_000_000)}
    assert stored_files(uploads_dir) == before


async def test_a_declared_oversize_body_is_refused_before_it_is_sent(api_process: str) -> None:
    """Content-Length over the limit with `Expect: 100-continue`: 413 at once, no invitation to send."""
    host, port = api_process.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            "POST /upload HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            "Content-Length: 104857600\r\n"
            "Expect: 100-continue\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    assert status_line.startswith(b"HTTP/1.1 413"), status_line


async def test_a_streamed_upload_is_cut_off_at_the_limit(api_process: str, uploads_dir: Path) -> None:
    """No Content-Length (chunked): the 413 must come while the client is still sending."""
    before = stored_files(uploads_dir)
    host, port = api_process.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    writer.write(
        (
            "POST /upload HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
    )
    total_planned = 50 * 1024 * 1024
    sent = 0
    answered = asyncio.Event()

    async def send_body() -> None:
        # Like a browser: keep sending while watching for an early answer, and stop on it. Pacing
        # the chunks lets the server keep up, so it never closes on unread data (which would make
        # the kernel reset the connection and drop the answer on the floor).
        nonlocal sent
        chunk = b"\xff" * 65536
        pieces = [head] + [chunk] * (total_planned // len(chunk))
        with contextlib.suppress(ConnectionError, OSError):
            for piece in pieces:
                if answered.is_set():
                    return
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
                sent += len(piece)
                await asyncio.sleep(0.001)  # pacing, as said above: a gap, not a wait for anything

    sender = asyncio.create_task(send_body())
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout=20)
        answered.set()
        await sender
    finally:
        sender.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    # `sent` includes what sits in the two loopback socket buffers (a few MB); an uncapped server
    # would have taken all 50 MB before answering.
    assert sent < total_planned / 4, f"the server let {sent} bytes in before refusing"
    assert stored_files(uploads_dir) == before


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        ({"picture": ("a.jpg", images.jpeg(), "image/jpeg")}, uploads.WRONG_FIELD.format(name="picture")),
        (
            [
                ("file", ("a.jpg", images.jpeg(), "image/jpeg")),
                ("file", ("b.jpg", images.jpeg(), "image/jpeg")),
            ],
            uploads.TWO_FILES,
        ),
    ],
)
async def test_wrong_form_shapes_get_422(client: httpx.AsyncClient, files, detail: str) -> None:
    response = await client.post("/upload", files=files)

    assert response.status_code == 422
    assert response.json() == {"detail": detail}


async def test_a_form_without_a_file_gets_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/upload", data={"note": "hello"}, files={"other": (None, "x")})

    assert response.status_code == 422
    assert response.json() == {"detail": uploads.MISSING_FILE}


async def test_a_body_that_is_not_multipart_gets_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/upload", json={"file": "data"})

    assert response.status_code == 422
    assert response.json() == {"detail": uploads.NOT_MULTIPART}


async def test_an_idempotency_key_returns_the_first_task(client: httpx.AsyncClient, db: AsyncSession) -> None:
    data = images.jpeg(100, 80)
    headers = {"Idempotency-Key": "retry-me-7f3a"}

    first = await upload(client, data, headers=headers)
    second = await upload(client, data, headers=headers)

    assert first.status_code == second.status_code == 200
    assert second.json()["task_id"] == first.json()["task_id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.json()["message"] == tasks.UPLOAD_REPLAYED
    rows = await db.scalars(select(ImageTask).where(ImageTask.idempotency_key == "retry-me-7f3a"))
    assert len(rows.all()) == 1


async def test_concurrent_retries_with_one_key_make_one_task(client: httpx.AsyncClient) -> None:
    data = images.jpeg(90, 90)
    headers = {"Idempotency-Key": "burst-1"}

    responses = await asyncio.gather(*(upload(client, data, headers=headers) for _ in range(6)))

    assert {response.status_code for response in responses} == {200}
    assert len({response.json()["task_id"] for response in responses}) == 1


async def test_a_reused_key_with_another_file_is_refused(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "key-for-one-file"}
    assert (await upload(client, images.jpeg(50, 50), headers=headers)).status_code == 200

    response = await upload(client, images.jpeg(60, 60), headers=headers)

    assert response.status_code == 422
    assert response.json() == {"detail": tasks.IDEMPOTENCY_KEY_REUSED}


async def test_a_malformed_idempotency_key_is_refused(client: httpx.AsyncClient) -> None:
    response = await upload(client, images.jpeg(), headers={"Idempotency-Key": "has spaces in it"})

    assert response.status_code == 400
    assert response.json() == {"detail": tasks.BAD_IDEMPOTENCY_KEY}


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("/var/www/abs.jpg", "abs.jpg"),
        ("C:\\Users\\me\\win.jpg", "win.jpg"),
        ("..", "upload"),
        ("фото 写真 صورة.jpg", "фото 写真 صورة.jpg"),
        ("quote\"s 'and' <b>tags</b>.jpg", "b>.jpg"),
        ("x" * 300 + ".jpg", "x" * 255),
    ],
)
async def test_client_file_names_are_display_names_only(
    client: httpx.AsyncClient, db: AsyncSession, uploads_dir: Path, sent: str, shown: str
) -> None:
    response = await upload(client, images.jpeg(40, 30), sent)

    assert response.status_code == 200
    assert response.json()["filename"] == shown
    task = await db.get(ImageTask, response.json()["task_id"])
    assert task is not None
    assert task.filename == shown
    assert is_stored_name(task.input_name)
    assert (uploads_dir / task.input_name).is_file()


async def raw_exchange(api_process: str, request: bytes, *, close_early: bool = False) -> bytes:
    """Send bytes exactly as given (no client-side URL clean-up) and return the status line."""
    host, port = api_process.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        if close_early:
            return b""
        return await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def multipart_request(body: bytes, boundary: str = "xyz") -> bytes:
    head = (
        "POST /upload HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def test_a_body_cut_before_its_closing_boundary_is_422(api_process: str, uploads_dir: Path) -> None:
    before = stored_files(uploads_dir)
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + images.jpeg()
    )  # no closing --xyz--

    status_line = await raw_exchange(api_process, multipart_request(body))

    assert status_line.startswith(b"HTTP/1.1 422"), status_line
    assert stored_files(uploads_dir) == before


async def test_an_animation_over_the_frame_limit_is_refused_at_upload(client: httpx.AsyncClient) -> None:
    frames = [Image.new("L", (4, 4), shade) for shade in range(60)]  # the tests allow 50
    data = images.encode(frames[0], "GIF", save_all=True, append_images=frames[1:])

    response = await upload(client, data, "long.gif")

    assert response.status_code == 422
    assert response.json() == {"detail": more_frames_than_message(50)}


async def test_a_client_that_vanishes_mid_upload_leaves_nothing_behind(
    api_process: str, client: httpx.AsyncClient, uploads_dir: Path
) -> None:
    before = stored_files(uploads_dir)
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + images.jpeg()
    request = multipart_request(body + b"\r\n--xyz--\r\n")
    # Promise the whole body, send half of it, hang up.
    await raw_exchange(api_process, request[: len(request) // 2], close_early=True)

    async def nothing_left() -> bool:
        return stored_files(uploads_dir) == before

    await eventually(nothing_left, timeout=10, what="the half-received upload removed")
    assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    "path", ["/processed/../config.py", "/static/../config.py", "/processed/..%2Fconfig.py"]
)
async def test_no_raw_path_reaches_outside_the_served_folders(api_process: str, path: str) -> None:
    status_line = await raw_exchange(api_process, f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())

    assert status_line.startswith(b"HTTP/1.1 404"), status_line
