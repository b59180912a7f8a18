"""A 30 MB upload refused before its body is read, through the clients people use: httpx and
requests send the whole body before reading the answer, curl reads while it sends. Each must read
the 4xx every time, not a connection reset: the refusal goes out at once and the HTTP layer's
lingering close (api/http_limits.py) drops what the client still sends, within LINGER_BYTES and
LINGER_SECONDS, before closing. And a client that never stops sending is still cut off there.

The suite's API takes uploads of at most 1 MB (MAX_UPLOAD_BYTES in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests

from api.http_limits import LINGER_BYTES, LINGER_SECONDS
from api.uploads import NOT_MULTIPART, TOO_LARGE, WRONG_FIELD
from tests import images

ROUNDS = 20
BIG = 30 * 1024 * 1024
BOUNDARY = "refusal-test-boundary"
CHUNK = 256 * 1024
# How much later than its limit a close may come on a loaded two-core machine.
SLACK_SECONDS = 3.0


@dataclass(frozen=True)
class Case:
    """One way to be refused early: the request's content type, whether its length is declared
    (Content-Length) or not (chunked, so only its first bytes can be judged), and the answer."""

    name: str
    content_type: str
    declared: bool
    field: str
    status: int
    detail: str


CASES = [
    # Refused by its declared length, before a byte of the body is read.
    Case("declared length", f"multipart/form-data; boundary={BOUNDARY}", True, "file", 413, TOO_LARGE),
    # Refused by its head, before a byte of the body is read: not a form at all (sent chunked, as
    # with a declared length that is over the limit, and refused for that first).
    Case("wrong type", "application/octet-stream", False, "file", 422, NOT_MULTIPART),
    # Refused at its first bytes: the file in the wrong field, with no length to judge it by.
    Case("first bytes", f"multipart/form-data; boundary={BOUNDARY}", False, "image", 422, WRONG_FIELD),
]


def body(field: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    jpeg = images.jpeg()
    return head + jpeg + b"\0" * (BIG - len(head) - len(jpeg) - len(tail)) + tail


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bodies")
    paths = {}
    for field in {case.field for case in CASES}:
        paths[field] = folder / f"{field}.bin"
        paths[field].write_bytes(body(field))
    return paths


def expected_detail(case: Case) -> str:
    if case.status == 413:
        return case.detail.format(limit=1_000_000)
    if case.detail == WRONG_FIELD:
        return case.detail.format(name=case.field)
    return case.detail


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


async def async_chunks(data: bytes) -> AsyncIterator[bytes]:
    for piece in chunks(data):
        yield piece


async def with_httpx(url: str, case: Case, data: bytes, path: Path) -> tuple[int, dict]:
    content: bytes | AsyncIterator[bytes] = data if case.declared else async_chunks(data)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{url}/upload", content=content, headers={"Content-Type": case.content_type}
        )
    return response.status_code, response.json()


async def with_requests(url: str, case: Case, data: bytes, path: Path) -> tuple[int, dict]:
    def post() -> requests.Response:
        with requests.Session() as session:
            return session.post(
                f"{url}/upload",
                data=data if case.declared else chunks(data),
                headers={"Content-Type": case.content_type},
                timeout=30,
            )

    response = await asyncio.to_thread(post)
    return response.status_code, response.json()


async def with_curl(url: str, case: Case, data: bytes, path: Path) -> tuple[int, dict]:
    command = ["curl", "-sS", "--max-time", "30", "-H", f"Content-Type: {case.content_type}"]
    if not case.declared:
        command += ["-H", "Transfer-Encoding: chunked"]
    command += ["-H", "Expect:", "--data-binary", f"@{path}", "-w", "\n%{http_code}", f"{url}/upload"]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode(errors="replace")
    text, _, status = stdout.decode().rpartition("\n")
    return int(status), json.loads(text)


CLIENTS: dict[str, Callable[[str, Case, bytes, Path], Awaitable[tuple[int, dict]]]] = {
    "httpx": with_httpx,
    "requests": with_requests,
    "curl": with_curl,
}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.parametrize("client", list(CLIENTS))
async def test_a_30_mb_upload_refused_early_reads_its_answer_every_time(
    api_process: str, bodies: dict[str, Path], client: str, case: Case
) -> None:
    path = bodies[case.field]
    data = path.read_bytes()
    answers = [await CLIENTS[client](api_process, case, data, path) for _ in range(ROUNDS)]

    assert answers == [(case.status, {"detail": expected_detail(case)})] * ROUNDS


async def test_a_client_that_never_stops_sending_is_cut_off_at_the_linger_bounds(api_process: str) -> None:
    """Refused by its declared length, it writes on regardless, reading nothing: the server drops
    at most LINGER_BYTES of it for at most LINGER_SECONDS, then closes (the writes fail)."""
    host, port = api_process.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n" % (10 * 1024**3)
    )
    sent = 0
    started = time.monotonic()
    piece = b"\0" * CHUNK
    with contextlib.suppress(ConnectionError):
        while time.monotonic() - started < LINGER_SECONDS + 4 * SLACK_SECONDS:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
    elapsed = time.monotonic() - started
    answer = b""
    with contextlib.suppress(ConnectionError):
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()

    assert elapsed < LINGER_SECONDS + SLACK_SECONDS, f"still taking the body after {elapsed:.1f} s"
    # What the two kernels' socket buffers hold on top of what the server read and dropped.
    assert sent < LINGER_BYTES + 16 * 1024 * 1024, f"{sent:,} bytes were taken"
    if answer:  # what the client had not read may be lost to the reset the close makes
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
