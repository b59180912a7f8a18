"""Requests that offer `Upgrade: h2c` (curl --http2, Java's HttpClient, Ktor on plain HTTP) are served
as the HTTP/1.1 requests they also are, bodies included (api/http_limits.py), over raw sockets so the
bytes and their split into writes are exactly as given. The real clients are in tests/client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from tests import images

BOUNDARY = b"h2cboundary"
OFFER = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


def form_body(filename: bytes = b"offered.jpg") -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + images.jpeg(40, 30) + b"\r\n"
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="submit"\r\n\r\nUpload\r\n'
        b"--" + BOUNDARY + b"--\r\n"
    )  # fmt: skip


def upload_head(*, length: int | None, offer: bytes = OFFER) -> bytes:
    framing = b"Content-Length: %d\r\n" % length if length is not None else b"Transfer-Encoding: chunked\r\n"
    return (
        b"POST /upload HTTP/1.1\r\nHost: test\r\nAccept: application/json\r\n" + offer + framing
        + b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n\r\n"
    )  # fmt: skip


@contextlib.asynccontextmanager
async def connection(api_process: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = api_process.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 answer with a Content-Length: its status line, headers and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), timeout=20)
    return status, headers, body


def accepted(status: bytes, body: bytes) -> dict:
    assert status == b"HTTP/1.1 200 OK", (status, body[:300])
    answer = json.loads(body)
    assert answer["filename"] == "offered.jpg"
    assert answer["ignored_fields"] == ["submit"]
    return answer


async def test_an_upload_offering_h2c_in_one_write_keeps_its_body(api_process: str) -> None:
    body = form_body()
    async with connection(api_process) as (reader, writer):
        writer.write(upload_head(length=len(body)) + body)
        status, _, answer = await read_answer(reader)

    accepted(status, answer)


async def test_an_upload_offering_h2c_with_its_body_in_later_writes_keeps_it(api_process: str) -> None:
    """The head alone first (as Ktor and Java write), then the body in pieces."""
    body = form_body()
    async with connection(api_process) as (reader, writer):
        writer.write(upload_head(length=len(body)))
        await writer.drain()
        for start in range(0, len(body), 700):
            writer.write(body[start : start + 700])
            await writer.drain()
        status, _, answer = await read_answer(reader)

    accepted(status, answer)


async def test_a_chunked_upload_offering_h2c_keeps_its_body(api_process: str) -> None:
    body = form_body()
    third = len(body) // 3
    pieces = (body[:third], body[third : 2 * third], body[2 * third :])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    async with connection(api_process) as (reader, writer):
        writer.write(upload_head(length=None) + chunked[:50])
        await writer.drain()
        writer.write(chunked[50:] + b"0\r\n\r\n")
        status, _, answer = await read_answer(reader)

    accepted(status, answer)


@pytest.mark.parametrize("pipelined", [False, True])
async def test_the_connection_serves_the_next_request_after_a_declined_offer(
    api_process: str, pipelined: bool
) -> None:
    body = form_body()
    health = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
    async with connection(api_process) as (reader, writer):
        writer.write(upload_head(length=len(body)) + body + (health if pipelined else b""))
        first = await read_answer(reader)
        if not pipelined:
            writer.write(health)
        second = await read_answer(reader)

    accepted(first[0], first[2])
    assert second[0] == b"HTTP/1.1 200 OK" and json.loads(second[2]) == {"status": "ok"}


async def test_a_get_offering_h2c_is_answered_in_http_1_1(api_process: str) -> None:
    async with connection(api_process) as (reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: test\r\n" + OFFER + b"\r\n")
        status, headers, answer = await read_answer(reader)

    assert status == b"HTTP/1.1 200 OK"  # not 101 Switching Protocols
    assert b"upgrade" not in headers
    assert json.loads(answer) == {"status": "ok"}
