"""A worker paused (SIGSTOP) past its lease while another worker takes its task over: once resumed
it abandons the render (its child process killed), records nothing, and the new owner's outcome is
the only one."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.base import TEMP_PREFIX
from tests import images
from tests.faults.processes import Started, alive, children, descendants, send, worker_ready
from tests.waiting import eventually, final_row, task_row_when

# About eight seconds of blurring on one core: heavy (a child process of its own), and still
# rendering when the paused worker resumes, a heartbeat later.
SLOW_OPS = [{"op": "blur", "radius": 50}] * 20


async def test_a_worker_resumed_after_losing_its_lease_abandons_the_render(
    client: httpx.AsyncClient,
    workers: Callable[..., Started],
    db: AsyncSession,
    processed_dir: Path,
) -> None:
    # Partial files a killed process left earlier in the suite are the API sweep's to remove.
    left_before = set(processed_dir.glob(f"{TEMP_PREFIX}*"))
    paused = workers("fault-worker-paused")
    await worker_ready(paused)
    posted = await client.post(
        "/upload",
        files={"file": ("paused.jpg", images.jpeg(3000, 3000), "image/jpeg")},
        data={"ops": json.dumps(SLOW_OPS)},
    )
    assert posted.status_code == 200, posted.text
    task_id = posted.json()["task_id"]
    await task_row_when(db, task_id, lambda row: row.status == "processing", what="processing")
    main = paused.process.pid

    def render_children() -> set[int]:  # forked by the fork server, a child of the worker
        return descendants(main) - children(main)

    async def rendering() -> bool:
        return bool(render_children())

    await eventually(rendering, timeout=30, what="the render child started")
    rendered_by = render_children()
    group = {main} | descendants(main)
    send(group, signal.SIGSTOP)
    try:
        other = workers("fault-worker-takes-over")
        taken = await task_row_when(
            db, task_id, lambda row: row.attempts == 2, timeout=60, what="claimed by the other worker"
        )
    finally:
        send(group, signal.SIGCONT)

    async def abandoned() -> bool:
        return "lease lost to another claim; render abandoned" in paused.log_file.read_text(errors="replace")

    await eventually(abandoned, timeout=20, what=lambda: f"the paused worker gives up: {paused.log_tail()}")
    done = await final_row(db, task_id, timeout=60)

    assert taken.status in ("processing", "done")
    assert (done.status, done.attempts, done.error) == ("done", 2, None), done
    for pid in rendered_by:
        assert not alive(pid), "the abandoned render's process is killed"

    def partials() -> set[Path]:
        return set(processed_dir.glob(f"{TEMP_PREFIX}*")) - left_before

    async def no_partials() -> bool:
        return not partials()

    # Each worker removes its own partial files as its render ends, which may come a moment after
    # the row says done.
    await eventually(
        no_partials,
        timeout=10,
        what=lambda: f"partial outputs left: {partials()}",
    )
    log = paused.log_file.read_text(errors="replace")
    assert f"task {task_id} done" not in log, "the paused worker recorded nothing"
    assert f"task {task_id} done" in other.log_file.read_text(errors="replace")
    assert await paused.stop() == 0, paused.log_tail()
    assert await other.stop() == 0, other.log_tail()
