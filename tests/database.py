"""A short-lived session on a test database, for looking at rows the way the services left them."""

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
