"""A worker SIGKILLed in the middle of an image: the message comes back after ACK_WAIT_SECONDS and
another worker finishes the task, once, while uploads keep arriving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tests import images
from tests.faults.burst import Burst, new_prefix
from tests.faults.outcome import assert_processed_once, rows_named, wait_until_done, wait_until_settled
from tests.faults.processes import Started, alive, descendants
from tests.waiting import eventually


async def test_a_worker_killed_mid_image_leaves_the_task_to_another_worker_which_finishes_it_once(
    client: httpx.AsyncClient,
    api_process: str,
    workers: Callable[[str], Started],
    db: AsyncSession,
    processed_dir: Path,
) -> None:
    prefix = new_prefix("worker-kill")
    # One worker at first, so the one holding the big image is known without reading logs.
    first = workers("fault-worker-killed")
    big = images.encode(images.photo(6000, 6000), "JPEG", quality=50)
    posted = await client.post("/upload", files={"file": (f"{prefix}-big.jpg", big, "image/jpeg")})
    assert posted.status_code == 200, posted.text
    big_id = posted.json()["task_id"]

    async with Burst(api_process, prefix) as burst:

        async def processing() -> bool:
            status = (await client.get(f"/status/{big_id}")).json()["status"]
            assert status in ("pending", "processing"), f"task {big_id} went {status} before processing"
            return status == "processing"

        await eventually(processing, timeout=30, what=f"task {big_id} processing")
        below = descendants(first.process.pid)  # a heavy render's fork server and child, if any
        await first.kill()
        [killed_mid_image] = [row for row in await rows_named(db, prefix) if row.id == big_id]
        second = workers("fault-worker-second")
        await burst.wait_for_more(10)

    assert (killed_mid_image.status, killed_mid_image.attempts) == ("processing", 1), killed_mid_image

    async def gone() -> bool:
        return not any(alive(pid) for pid in below)

    await eventually(gone, timeout=5, what="the killed worker's render processes gone with it")
    assert not (processed_dir / f"{Path(killed_mid_image.input_name).stem}.jpg").exists(), "killed too late"
    print("OUTCOMES", len(burst.outcomes))
    assert burst.unexpected(allowed_statuses={200}) == []
    await wait_until_done(client, burst.accepted | {big_id}, timeout=40)
    rows = await wait_until_settled(db, prefix, timeout=5)
    [big_row] = [row for row in rows if row.id == big_id]
    assert (big_row.status, big_row.attempts) == ("done", 2), big_row
    assert {row.id for row in rows} == burst.accepted | {big_id}
    assert_processed_once(rows, processed_dir)
    assert await second.stop() == 0, second.log_tail()
