"""Graceful shutdown of a real worker process: SIGTERM mid-image finishes the image, then exits 0."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import httpx

from devstack.stack import start_worker, stop_process
from tests import images
from tests.test_end_to_end import wait_final


async def test_a_worker_stopped_mid_image_finishes_it_and_exits_cleanly(
    client: httpx.AsyncClient, stack_env: dict[str, str], workdir: Path
) -> None:
    log_file = workdir / "graceful-worker.log"
    process = start_worker(stack_env, log_file=log_file)
    try:
        # Wait until this worker is fetching (it logs when ready) so the big image reaches it.
        deadline = time.monotonic() + 30
        while "worker ready" not in log_file.read_text(errors="replace"):
            assert time.monotonic() < deadline and process.poll() is None, log_file.read_text()
            await asyncio.sleep(0.05)
        big = images.encode(images.photo(6000, 6000), "JPEG", quality=50)
        task_id = (await client.post("/upload", files={"file": ("big.jpg", big, "image/jpeg")})).json()[
            "task_id"
        ]
        deadline = time.monotonic() + 30
        while (await client.get(f"/status/{task_id}")).json()["status"] == "pending":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 60)
    finally:
        stop_process(process)

    assert exit_code == 0, log_file.read_text()[-3000:]
    status = await wait_final(client, task_id, timeout=5)
    assert status["status"] == "done", status["error"]
    log = log_file.read_text()
    assert re.search(r"stop requested with 1 image\(s\) in flight", log), "SIGTERM came mid-image"
    assert "worker stopped" in log
