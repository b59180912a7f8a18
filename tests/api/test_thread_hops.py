"""The request path keeps off anyio's thread pool except for real blocking work, and keeps connections.

FastAPI runs a plain `def` endpoint or dependency in anyio's default thread pool (40 threads, then
shared with every upload's fsync and probe); two such trivial dependencies once cost every upload two
extra thread hops, queued behind the fsyncs of 64 concurrent uploads (issue 20). And under that load no
keep-alive connection may be closed by the server.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import httpx
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.main import app
from tests import images

CONCURRENT_UPLOADS = 64
ROUNDS = 3


def _calls(dependant: Dependant) -> list[Any]:
    calls = [dependant.call] if dependant.call is not None else []
    for sub in dependant.dependencies:
        calls += _calls(sub)
    return calls


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, inside included routers too (FastAPI wraps an included router's routes)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and hasattr(inner, "routes"):
            found += _api_routes(inner.routes)
    return found


def test_no_route_endpoint_or_dependency_runs_in_a_thread() -> None:
    routes = _api_routes(app.routes)
    assert any(route.path == "/upload" for route in routes)
    sync = sorted(
        {
            f"{route.path}: {getattr(call, '__qualname__', call)}"
            for route in routes
            for call in _calls(route.dependant)
            if not (inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))
        }
    )
    assert sync == []


async def test_concurrent_keep_alive_uploads_keep_their_connections(api_process: str) -> None:
    """64 uploads at once, three times over, on 64 keep-alive connections: none is closed or reopened."""
    data = images.jpeg(64, 48)
    opened = 0

    async def trace(event: str, info: dict[str, Any]) -> None:
        nonlocal opened
        if event == "connection.connect_tcp.complete":
            opened += 1

    limits = httpx.Limits(
        max_connections=CONCURRENT_UPLOADS, max_keepalive_connections=CONCURRENT_UPLOADS, keepalive_expiry=120
    )
    async with httpx.AsyncClient(base_url=api_process, limits=limits, timeout=120) as client:

        async def upload(index: int) -> httpx.Response:
            return await client.post(
                "/upload",
                files={"file": (f"c{index}.jpg", data, "image/jpeg")},
                extensions={"trace": trace},
            )

        for _ in range(ROUNDS):
            answers = await asyncio.gather(*(upload(i) for i in range(CONCURRENT_UPLOADS)))
            assert [a.status_code for a in answers] == [200] * CONCURRENT_UPLOADS
            assert not [a for a in answers if a.headers.get("connection") == "close"]
    assert opened == CONCURRENT_UPLOADS
