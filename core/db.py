"""Database plumbing shared by the API and the worker: the declarative base and the factories.

Engines are made by whoever owns a process's lifetime (the API lifespan, the worker's main) and
handed down; nothing here connects at import time.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so Alembic's autogenerate and hand-written migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# What a database that is down, restarting or unreachable raises: a passing fault, answered with
# 503 by the API and with a delayed redelivery by the worker, never with a 500 or a failed task.
DATABASE_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    # asyncpg raises plain OSErrors while connecting (refused, no such socket file), unwrapped.
    OSError,
    TimeoutError,
)


# SQLSTATE classes of a server that cannot serve us right now: 08 connection exception, 53 out of
# resources (too many connections), 57 operator intervention (shutting down, starting up, killed).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means "the database cannot be reached now" rather than a bug in a query.

    While PostgreSQL shuts down or starts up, asyncpg's errors reach us as a bare DBAPIError, the
    same class that integrity and syntax errors share; their SQLSTATE tells them apart.
    """
    if isinstance(exc, DATABASE_UNAVAILABLE_ERRORS):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(database_url: str, *, pool_size: int = 20, pre_ping: bool = True) -> AsyncEngine:
    """An asyncpg engine that notices dead connections (a restarted PostgreSQL) before using them.

    `pool_size` connections are kept; up to half as many more are opened for a burst and closed
    after it. The API's default of 20 covers 16 uploads at once without opening a connection per
    request (each one a forked PostgreSQL backend); two API replicas and a few workers stay well
    under PostgreSQL's default max_connections of 100.

    `pre_ping` costs a round trip per checkout; a caller that already treats a connection error as
    "retry later" (the worker: nak, pause fetching) may go without it.
    """
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max(2, pool_size // 2),
        pool_pre_ping=pre_ping,
        pool_timeout=10,
        # Fail fast when the server is down instead of hanging a request or a message.
        connect_args={"timeout": 5, "command_timeout": 30},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
