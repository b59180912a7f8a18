"""The client's HTTP side: one httpx client per run, and the server's refusals put into words."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

# Per network operation (connect, each read or write), not per request: a large upload on a slow
# link takes as long as it takes, as long as bytes keep moving.
NETWORK_TIMEOUT_SECONDS = 60.0


class ApiError(Exception):
    """The server refused a request or could not be reached; the message is meant for people."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


# httpx's pool (httpcore 1.0) can hand one idle connection to two waiting requests; the loser queues
# again through a pass over every connection, and past about 16 connections these retries feed on
# each other: at 64 the client spent 14 ms of CPU per upload instead of 2.6 (BENCHMARKS.md, "httpx at
# c64"). So a run's connections are split into pools of at most this many.
POOL_CONNECTIONS = 16


class _Released(httpx.AsyncByteStream):
    """A response's body that tells its pool when the response is closed (its connection is free)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()


class SpreadTransport(httpx.AsyncBaseTransport):
    """`connections` connections as pools of at most POOL_CONNECTIONS; each request goes to the pool
    with the fewest requests in the air for its size, so none of them queues while another has room."""

    def __init__(self, connections: int) -> None:
        if connections < 1:
            raise ValueError("a transport needs at least one connection")
        full, rest = divmod(connections, POOL_CONNECTIONS)
        self._sizes = [POOL_CONNECTIONS] * full + ([rest] if rest else [])
        self._pools = [
            httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
            for n in self._sizes
        ]
        self._busy = [0] * len(self._sizes)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=lambda i: self._busy[i] / self._sizes[i])
        self._busy[index] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._busy[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Released(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        # Every pool is closed even if one fails; the first failure is raised.
        outcomes = await asyncio.gather(*(pool.aclose() for pool in self._pools), return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]


def make_client(base_url: str, api_key: str | None, *, connections: int) -> httpx.AsyncClient:
    headers = {"X-API-Key": api_key} if api_key else {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    if urllib.request.getproxies():
        # httpx reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY only when it makes its own
        # transports, so behind a proxy the client keeps httpx's one pool (and its churn past 16).
        return httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=NETWORK_TIMEOUT_SECONDS, limits=limits
        )
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=NETWORK_TIMEOUT_SECONDS,
        transport=SpreadTransport(connections),
    )


def describe(response: httpx.Response) -> str:
    """The server's own words for a refusal: `detail` as text, or each validation error's message."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail:
        return detail
    if isinstance(detail, list) and detail:
        # FastAPI's 422: [{"loc": [...], "msg": "..."}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", []) if part != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        if parts:
            return "; ".join(parts)
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def unreachable(base_url: str, exc: httpx.HTTPError) -> ApiError:
    return ApiError(f"cannot reach the server at {base_url}: {exc or type(exc).__name__}")


def checked(response: httpx.Response) -> httpx.Response:
    """The response itself when it succeeded; ApiError with the server's words otherwise."""
    if not response.is_success:
        raise ApiError(describe(response), status_code=response.status_code)
    return response
