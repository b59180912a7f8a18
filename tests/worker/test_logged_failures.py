"""What a real worker process logs when a step fails must name the failure, even one whose text is
empty (a TimeoutError's): an operator reading "lease renewal failed: " learns nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ImageTask
from devstack.stack import worker_process
from tests import images
from tests.database import session_on
from tests.waiting import eventually, task_row_when
from tests.worker.test_render_deadline import SLOW_OPS, SLOW_SIZE, upload

pytestmark = pytest.mark.timeout(120)

RENEWAL_FAILED = "lease renewal failed:"


def renewal_failures(log_file: Path) -> list[str]:
    lines = log_file.read_text(errors="replace").splitlines() if log_file.exists() else []
    return [line.rstrip() for line in lines if RENEWAL_FAILED in line]


async def test_a_lease_renewal_that_times_out_is_logged_by_its_type(
    stack_env: dict[str, str], workdir: Path, client: httpx.AsyncClient, db: AsyncSession
) -> None:
    log_file = workdir / "renewal-worker.log"
    # A beat every 0.5 s, each renewal bounded by one beat; the render takes seconds.
    env = {**stack_env, "ACK_WAIT_SECONDS": "1.5"}
    with worker_process(env, log_file=log_file):
        task_id = await upload(client, images.jpeg(*SLOW_SIZE), ops=json.dumps(SLOW_OPS))
        await task_row_when(db, task_id, lambda row: row.status == "processing", what="processing")
        # Another transaction holding the row (a long migration, a stuck session) stalls the
        # renewal's UPDATE past its beat: the renewal times out.
        async with session_on(stack_env["DATABASE_URL"]) as locker:
            await locker.execute(select(ImageTask.id).where(ImageTask.id == task_id).with_for_update())

            async def renewal_failed() -> bool:
                return bool(renewal_failures(log_file))

            await eventually(renewal_failed, timeout=30, what="the worker logging a failed renewal")
            await locker.rollback()
        assert (await client.delete(f"/tasks/{task_id}")).status_code == 204

    failures = renewal_failures(log_file)
    assert any(line.endswith(f"{RENEWAL_FAILED} TimeoutError") for line in failures), failures
    assert not any(line.endswith(RENEWAL_FAILED) for line in failures), failures
