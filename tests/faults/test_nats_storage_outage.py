"""With STORAGE_BACKEND=nats, NATS is the file store too: while it is down an upload is answered 503
with nothing stored (no row, no temporary file), and uploads work again once it is back.

On a stack of the module's own (tests/nats_stack.py), so stopping its NATS disturbs no other test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from core.storage import STORAGE_UNAVAILABLE
from devstack.stack import LocalServers
from tests import images
from tests.database import session_on
from tests.nats_stack import NatsStack, running_nats_stack, running_worker, scratch_files, upload
from tests.waiting import eventually, final_status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def nats_stack(servers: LocalServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsStack]:
    with running_nats_stack(servers, tmp_path_factory.mktemp("nats-storage-outage")) as stack:
        yield stack


@pytest.fixture(scope="module")
def nats_worker(nats_stack: NatsStack) -> Iterator[None]:
    with running_worker(nats_stack):
        yield


@pytest.fixture
async def api(nats_stack: NatsStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=nats_stack.api_url, timeout=30) as http:
        yield http


@pytest.fixture
async def db(nats_stack: NatsStack) -> AsyncIterator[AsyncSession]:
    async with session_on(nats_stack.database_url) as session:
        yield session


async def test_an_upload_while_nats_is_down_is_503_and_stores_nothing(
    nats_stack: NatsStack, nats_worker: None, api: httpx.AsyncClient, db: AsyncSession
) -> None:
    """It stops the module's NATS server (and starts it again)."""
    name = f"down-{uuid.uuid4().hex[:8]}.jpg"
    nats_stack.nats.stop()
    try:

        async def unready() -> bool:
            return (await api.get("/ready")).status_code == 503

        await eventually(unready, what="the API noticing NATS is down")
        response = await api.post("/upload", files={"file": (name, images.jpeg(), "image/jpeg")})
    finally:
        nats_stack.nats.start()

    assert (response.status_code, response.json()) == (503, {"detail": STORAGE_UNAVAILABLE})
    assert response.headers["retry-after"] == "5"
    assert await db.scalar(select(ImageTask.id).where(ImageTask.filename == name)) is None
    assert scratch_files(nats_stack.folders) == [], "the streamed temporary file is gone too"

    async def ready() -> bool:
        return (await api.get("/ready")).status_code == 200

    await eventually(ready, what="the API back once NATS is")
    task_id = await upload(api, images.jpeg(), "after.jpg")
    assert (await final_status(api, task_id))["status"] == "done"
