"""Database plumbing shared by the API and the worker: the declarative base and the factories.

Engines are made by whoever owns a process's lifetime (the API lifespan, the worker's main) and
handed down; nothing here connects at import time.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from sqlalchemy import MetaData, event
from sqlalchemy.dialects.postgresql.asyncpg import dialect as AsyncpgDialect
from sqlalchemy.engine import make_url
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


# Fail fast when the server is down instead of hanging a request or a message.
_CONNECT_TIMEOUT_SECONDS = 5
_COMMAND_TIMEOUT_SECONDS = 30
# How long a caller waits for a pooled connection before treating the database as unavailable.
POOL_TIMEOUT_SECONDS = 10


class CouldNotConnect(Exception):
    """Opening a connection failed, whatever the server or the network said: refused, no such
    database (3D000), a password not (or no longer) accepted (28P01), connections not allowed
    (55000), too many clients. Every pool opens its connections through `_engine_connect` or
    `_driver_connect` (below), so this is decided by where the error happened, not by a list of
    SQLSTATEs: no query ran, nothing was written, and until someone fixes the server or its settings
    the database is unavailable."""


# What a database that is down, restarting or unreachable raises: a passing fault, answered with
# 503 by the API and with a delayed redelivery by the worker, never with a 500 or a failed task.
DATABASE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    CouldNotConnect,
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    # asyncpg raises plain OSErrors while connecting (refused, no such socket file), unwrapped.
    OSError,
    TimeoutError,
)
# The driver's own pool (core.tasks) reports a connection or a pool closed under it as a bare
# InterfaceError, before the statement is sent ("cannot perform operation: connection is closed" when
# the protocol noticed first); its other InterfaceErrors (an argument of the wrong type, a missing
# feature) are bugs, which must not pass for an outage.
_CLOSED_UNDER_US = ("connection is closed", "pool is closing", "pool is closed")
# A pooled connection the server closed between its checkout and its statement (a restart's
# terminated sessions): the pool takes it back at once, and the caller's proxy then refuses every
# call with "cannot call Connection.fetchval(): connection has been released back to the pool".
# That is an outage only where a proxy is used inside its own `async with pool.acquire()` (core.tasks,
# core.key_limits), where nothing of ours releases it; anywhere else it is a proxy used after its
# release, a bug of ours, so `is_database_unavailable` does not match it (see `released_under_us`).
_RELEASED_UNDER_US = "connection has been released back to the pool"
# A connection the server ended while it sat idle in a pool (a restart's terminated sessions): asyncpg
# reads the server's FATAL message a loop turn before the end of the stream, and in between the
# connection looks open while its protocol waits out that error (state 2), refusing any statement
# with InternalClientError "cannot switch to state 11; another operation (2) is in progress". Only
# a message the server sent unasked leaves it so: a second statement on a busy connection is
# refused earlier, by the InterfaceError above that stays a bug.
_WAITING_OUT_A_SERVER_ERROR = "another operation (2) is in progress"


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
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)):
        return closed_under_us(exc)
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    if isinstance(exc, asyncpg.PostgresError):  # raised unwrapped on the driver's own connections
        return (exc.sqlstate or "")[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False


def closed_under_us(exc: BaseException) -> bool:
    """Whether asyncpg refused a statement, unsent, because the server or the pool had closed its
    connection (or the pool) under it."""
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return str(exc).endswith(_WAITING_OUT_A_SERVER_ERROR)
    if not isinstance(exc, asyncpg.InterfaceError):
        return False
    return str(exc).removeprefix("cannot perform operation: ") in _CLOSED_UNDER_US


def released_under_us(exc: BaseException) -> bool:
    """Whether asyncpg refused a call, unsent, because the pool had taken its connection back.

    Only a caller that made the call inside its own `async with pool.acquire()` may read this as
    "the server closed the connection under us" (an outage); anywhere else it is a bug."""
    return isinstance(exc, asyncpg.InterfaceError) and str(exc).endswith(_RELEASED_UNDER_US)


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
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max(2, pool_size // 2),
        pool_pre_ping=pre_ping,
        pool_timeout=POOL_TIMEOUT_SECONDS,
        connect_args={"timeout": _CONNECT_TIMEOUT_SECONDS, "command_timeout": _COMMAND_TIMEOUT_SECONDS},
    )
    event.listen(engine.sync_engine, "do_connect", _engine_connect)
    return engine


def _engine_connect(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    """Every new connection of an engine's pool (after a pre-ping found one dead, too)."""
    try:
        return dialect.connect(*cargs, **cparams)
    except Exception as exc:
        raise CouldNotConnect(_connect_failure(exc)) from exc


async def _driver_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """Every new connection of a driver pool."""
    try:
        return await asyncpg.connect(*args, **kwargs)
    except Exception as exc:
        raise CouldNotConnect(_connect_failure(exc)) from exc


def _connect_failure(exc: Exception) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return f"could not connect: {type(exc).__name__}{f' ({sqlstate})' if sqlstate else ''}: {exc}"


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# asyncpg's own pool, by the name the rest of the code knows it by (only core.tasks uses it).
DriverPool: TypeAlias = asyncpg.Pool

# Parses URLs for the driver pool as the engine does; a dialect object holds no connection.
_ASYNCPG_DIALECT = AsyncpgDialect()


async def make_driver_pool(database_url: str, *, max_size: int) -> DriverPool:
    """asyncpg's own pool on the engine's URL (parsed by the same dialect), for core.tasks' hot
    statements (see there for why a second pool).

    Connections open on first use, so a process starts while PostgreSQL is down. No reset query on
    release: those statements leave no session state (no transactions, locks or LISTENs) to clear.
    """
    _, options = _ASYNCPG_DIALECT.create_connect_args(make_url(database_url))
    # URL options meant for SQLAlchemy's adapter, not for asyncpg.connect(): its statement cache size
    # is asyncpg's own (0 behind a transaction-mode PgBouncer); the rest has no meaning here.
    if "prepared_statement_cache_size" in options:
        options["statement_cache_size"] = options.pop("prepared_statement_cache_size")
    for adapter_only in ("prepared_statement_name_func", "async_fallback", "async_creator_fn"):
        options.pop(adapter_only, None)
    return await asyncpg.create_pool(
        **options,
        min_size=0,
        max_size=max_size,
        reset=_keep_session,
        connect=_driver_connect,
        timeout=_CONNECT_TIMEOUT_SECONDS,
        command_timeout=_COMMAND_TIMEOUT_SECONDS,
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    return None
