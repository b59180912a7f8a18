"""The client's connections come in pools of at most 16 (httpcore's pool churns past that; issue 20).

Against the real API: 64 uploads at once, three rounds, on one client of 64 connections. Every upload
lands, each of the four pools holds its 16 connections, and every request hands its slot back when
its response closes, whether it was answered or failed.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from client.connection import POOL_CONNECTIONS, SpreadTransport, make_client
from devstack.servers import free_port
from tests import images

CONCURRENT = 64
ROUNDS = 3


def _transport(client: httpx.AsyncClient) -> SpreadTransport:
    transport = client._transport
    assert isinstance(transport, SpreadTransport)
    return transport


async def test_sixty_four_uploads_at_once_go_through_four_pools_of_sixteen(api_process: str) -> None:
    data = images.jpeg(64, 48)
    async with make_client(api_process, None, connections=CONCURRENT) as client:
        transport = _transport(client)
        assert transport._sizes == [POOL_CONNECTIONS] * 4

        async def upload(index: int) -> int:
            response = await client.post("/upload", files={"file": (f"p{index}.jpg", data, "image/jpeg")})
            return response.status_code

        for _ in range(ROUNDS):
            assert await asyncio.gather(*(upload(i) for i in range(CONCURRENT))) == [200] * CONCURRENT
            assert transport._busy == [0] * 4
        held = [len(pool._pool.connections) for pool in transport._pools]
    assert held == [POOL_CONNECTIONS] * 4


def test_connections_not_a_multiple_of_sixteen_make_a_smaller_last_pool() -> None:
    assert SpreadTransport(40)._sizes == [16, 16, 8]
    assert SpreadTransport(4)._sizes == [4]


async def test_a_request_that_fails_hands_its_slot_back() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    async with make_client(nobody, None, connections=20) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get("/health")
        assert _transport(client)._busy == [0, 0]


async def test_a_proxy_named_in_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY reaches the requests (httpx reads it only for transports it makes itself)."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0])
        body = b'{"status": "ok"}'
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        writer.write(head % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with server, make_client("http://imagequeue.example", None, connections=64) as client:
        response = await client.get("/health")
    assert response.json() == {"status": "ok"}
    assert seen == [b"GET http://imagequeue.example/health HTTP/1.1"]


def test_a_transport_needs_a_connection() -> None:
    with pytest.raises(ValueError, match="at least one connection"):
        SpreadTransport(0)
