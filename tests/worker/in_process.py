"""A worker run in the test's own event loop, with settings changed per test (the `worker` fixture of
tests/worker/conftest.py): `async with worker(heavy_render_pixels=...)` starts it, leaving the
block stops it, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any

from config import get_settings
from worker.__main__ import run

Worker = Callable[..., AbstractAsyncContextManager[None]]


@asynccontextmanager
async def started_worker(**changes: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(replace(get_settings(), **changes), stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
