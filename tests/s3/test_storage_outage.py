"""With STORAGE_BACKEND=s3, the S3 server (SeaweedFS) killed: while it is down an upload is answered
503 with Retry-After and nothing stored (no row, no temporary file, no object); killed in the middle
of a burst and started again, every upload the API accepted ends `done` exactly once, and no task
paid an attempt for the outage (the worker handed its tasks back).

On a stack of the module's own (tests/s3/stack.py), so killing its S3 server disturbs no other test.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from core.storage import STORAGE_UNAVAILABLE, Area
from tests import images
from tests.faults.burst import Burst, new_prefix
from tests.faults.outcome import assert_outputs_once, wait_until_done, wait_until_settled
from tests.nats_stack import scratch_files, upload
from tests.s3.stack import PREFIX, S3Stack, object_keys, s3_client
from tests.waiting import eventually, final_status

pytestmark = pytest.mark.timeout(150)


async def _ready(api: httpx.AsyncClient) -> bool:
    return (await api.get("/ready")).status_code == 200


async def test_an_upload_while_s3_is_down_is_503_and_stores_nothing(
    s3_stack: S3Stack, s3_worker: None, api: httpx.AsyncClient, db: AsyncSession
) -> None:
    """It kills the module's S3 server (and starts it again)."""
    name = f"down-{uuid.uuid4().hex[:8]}.jpg"
    s3_stack.seaweed.kill()
    try:

        async def unready() -> bool:
            return (await api.get("/ready")).status_code == 503

        await eventually(unready, what="the API noticing S3 is down")
        readiness = (await api.get("/ready")).json()
        assert (readiness["database"], readiness["nats"]) == ("ok", "ok"), readiness
        assert readiness["storage"] != "ok" and s3_stack.bucket in readiness["storage"], readiness
        response = await api.post("/upload", files={"file": (name, images.jpeg(), "image/jpeg")})
    finally:
        await asyncio.to_thread(s3_stack.seaweed.start)

    assert (response.status_code, response.json()) == (503, {"detail": STORAGE_UNAVAILABLE})
    assert response.headers["retry-after"] == "5"
    assert await db.scalar(select(ImageTask.id).where(ImageTask.filename == name)) is None
    assert scratch_files(s3_stack.folders) == [], "the streamed temporary file is gone too"

    await eventually(lambda: _ready(api), what="the API back once S3 is")
    task_id = await upload(api, images.jpeg(), "after.jpg")
    assert (await final_status(api, task_id))["status"] == "done"


async def test_uploads_accepted_across_an_s3_kill_are_all_processed_once(
    s3_stack: S3Stack, s3_worker: None, api: httpx.AsyncClient, db: AsyncSession
) -> None:
    prefix = new_prefix("s3-kill")
    s3_down = False
    try:
        async with Burst(s3_stack.api_url, prefix, concurrency=4) as burst:
            await burst.wait_for_more(10)
            s3_down = True
            await asyncio.to_thread(s3_stack.seaweed.kill)
            refused = await burst.wait_for_more(6)
            await asyncio.to_thread(s3_stack.seaweed.start)
            s3_down = False
            await eventually(lambda: _ready(api), what="the API back once S3 is")
            await burst.wait_for_more(10)
    finally:
        if s3_down:
            s3_stack.seaweed.start()

    assert burst.unexpected(allowed_statuses={200, 503}) == []
    assert any(outcome.status == 503 for outcome in refused), "no upload met the outage"
    await wait_until_done(api, burst.accepted, timeout=60)
    rows = await wait_until_settled(db, prefix, timeout=10)
    assert {row.id for row in rows} == burst.accepted, "a refused upload left a row, or an accepted one none"
    assert [row for row in rows if row.attempts != 1] == [], "the outage cost a task an attempt"

    async with s3_client(s3_stack.seaweed) as s3:
        keys = await object_keys(s3, s3_stack.bucket)
        processed = f"{PREFIX}{Area.PROCESSED.value}/"
        outputs = {key.removeprefix(processed) for key in keys if key.startswith(processed)}
        wanted = {row.output_name for row in rows if row.output_name}
        contents: dict[str, bytes] = {}
        for name in wanted & outputs:
            answer = await s3.get_object(Bucket=s3_stack.bucket, Key=s3_stack.key(Area.PROCESSED, name))
            async with answer["Body"] as body:
                contents[name] = await body.read()
    mine = {name for name in outputs if any(name.startswith(row.input_name.split(".")[0]) for row in rows)}
    assert_outputs_once(rows, mine, contents.__getitem__)
