"""Graceful shutdown of a real worker process: SIGTERM mid-image finishes the image, then exits 0."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx

from devstack.stack import start_worker, stop_process
from tests import images
from tests.waiting import eventually, final_status


async def test_a_worker_stopped_mid_image_finishes_it_and_exits_cleanly(
    client: httpx.AsyncClient, stack_env: dict[str, str], workdir: Path
) -> None:
    log_file = workdir / "graceful-worker.log"
    process = start_worker(stack_env, log_file=log_file)
    try:
        # Wait until this worker is fetching (it logs when ready) so the big image reaches it.
        async def ready() -> bool:
            log = log_file.read_text(errors="replace")
            if "worker ready" in log:
                return True
            assert process.poll() is None, log
            return False

        await eventually(ready, timeout=30, what=f"'worker ready' in {log_file}")
        big = images.encode(images.photo(6000, 6000), "JPEG", quality=50)
        task_id = (await client.post("/upload", files={"file": ("big.jpg", big, "image/jpeg")})).json()[
            "task_id"
        ]

        async def taken() -> bool:
            return (await client.get(f"/status/{task_id}")).json()["status"] != "pending"

        await eventually(taken, timeout=30, what=f"task {task_id} taken by the worker")

        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 60)
    finally:
        stop_process(process)

    assert exit_code == 0, log_file.read_text()[-3000:]
    status = await final_status(client, task_id, timeout=5)
    assert status["status"] == "done", status["error"]
    log = log_file.read_text()
    assert re.search(r"stop requested with 1 image\(s\) in flight", log), "SIGTERM came mid-image"
    assert "worker stopped" in log
