"""A short-lived session on a test database, for looking at rows the way the services left them,
and what a worker records on a row, for tests that fake a finished task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession

from core.db import make_engine, make_sessionmaker


@asynccontextmanager
async def session_on(database_url: str) -> AsyncIterator[AsyncSession]:
    engine = make_engine(database_url, pool_size=2)
    try:
        async with make_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


def recorded_outputs(name: str) -> list[dict[str, object]]:
    """What a worker records for one output (the row's files are its outputs' files)."""
    return [
        {
            "name": "default",
            "file": name,
            "format": "JPEG",
            "width": 40,
            "height": 30,
            "frames": 1,
            "size_bytes": 1,
        }
    ]
