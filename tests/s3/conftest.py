"""Fixtures of the `s3` backend's tests: each module gets a stack of its own (tests/s3/stack.py), so
the outage test killing its S3 server disturbs no other module, and a worker, API client, database
session and S3 client on that stack."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from devstack.stack import LocalServers, worker_process
from tests.database import session_on
from tests.s3.stack import S3Stack, running_s3_stack, s3_client


@pytest.fixture(scope="module")
def s3_stack(
    servers: LocalServers, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[S3Stack]:
    # Module scope in a conftest: one stack per module that asks, named after it.
    with running_s3_stack(servers, tmp_path_factory.mktemp(request.module.__name__.rsplit(".")[-1])) as stack:
        yield stack


@pytest.fixture(scope="module")
def s3_worker(s3_stack: S3Stack) -> Iterator[None]:
    with worker_process(s3_stack.env, log_file=s3_stack.folders.uploads_dir.parent / "worker.log"):
        yield


@pytest.fixture
async def api(s3_stack: S3Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=s3_stack.api_url, timeout=30) as http:
        yield http


@pytest.fixture
async def db(s3_stack: S3Stack) -> AsyncIterator[AsyncSession]:
    async with session_on(s3_stack.database_url) as session:
        yield session


@pytest.fixture
async def s3(s3_stack: S3Stack) -> AsyncIterator[Any]:
    async with s3_client(s3_stack.seaweed) as client:
        yield client
