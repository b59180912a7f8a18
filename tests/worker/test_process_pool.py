"""WORKER_POOL=processes: a real worker renders in child processes, survives one of them being
killed mid-image (the task is retried and done), and still stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devstack.stack import start_worker, stop_process
from tests import images
from tests.waiting import eventually, final_status
from worker.pool import RenderPool

# Slow enough to be caught mid-render: several large outputs at the WebP encoder's highest effort.
SLOW_OUTPUTS = {
    f"copy{index}": [{"op": "blur", "radius": 30}, {"op": "format", "format": "webp"}] for index in range(4)
}


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (the forkserver and the pool's children under it)."""
    children = _children_by_parent()
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


@pytest.fixture(scope="module")
def pool_worker(stack_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    log_file = workdir / "pool-worker.log"
    env = {**stack_env, "WORKER_POOL": "processes", "WORKER_CONCURRENCY": "2", "WEBP_METHOD": "6"}
    process = start_worker(env, log_file=log_file)
    yield process
    assert stop_process(process) == 0, log_file.read_text()[-3000:]
    assert descendants(process.pid) == set(), "the render processes end with the worker"


async def test_images_are_rendered_in_child_processes(
    client: httpx.AsyncClient, pool_worker: subprocess.Popen
) -> None:
    created = await client.post(
        "/upload",
        files={"file": ("a.jpg", images.jpeg(640, 480), "image/jpeg")},
        data={"preset": "thumbnail"},
    )

    status = await final_status(client, created.json()["task_id"])

    assert status["status"] == "done", status["error"]
    assert (status["outputs"][0]["width"], status["outputs"][0]["height"]) == (256, 192)
    assert len(descendants(pool_worker.pid)) >= 2, "a forkserver and its render processes"
    # A pooled child cannot report while it renders: its placeholder is recorded with the outputs.
    placeholder = status["placeholder"]
    assert placeholder is not None and (placeholder["width"], placeholder["height"]) == (640, 480)


async def test_a_render_process_killed_mid_image_costs_one_attempt(
    client: httpx.AsyncClient, pool_worker: subprocess.Popen
) -> None:
    created = await client.post(
        "/upload",
        files={"file": ("slow.jpg", images.jpeg(2400, 1800), "image/jpeg")},
        data={"outputs": json.dumps(SLOW_OUTPUTS)},
    )
    task_id = created.json()["task_id"]

    async def processing() -> bool:
        return (await client.get(f"/status/{task_id}")).json()["status"] == "processing"

    await eventually(processing, timeout=30, what="the slow task being processed")
    # The render processes are the forkserver's children, the worker's grandchildren.
    render_processes = descendants(pool_worker.pid) - set(_children_by_parent()[pool_worker.pid])
    assert render_processes
    for pid in render_processes:
        os.kill(pid, signal.SIGKILL)

    status = await final_status(client, task_id, timeout=120)

    assert status["status"] == "done", status["error"]
    assert status["attempts"] == 2
    assert pool_worker.poll() is None, "the worker itself lives on"


def _faults_of_a_second_12_mp_frame() -> int:
    """In a render process: page faults while filling a 12 MP frame after another was freed."""
    Image.new("RGB", (4000, 3000), (1, 2, 3)).close()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    Image.new("RGB", (4000, 3000), (1, 2, 3)).close()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


async def test_a_pooled_render_process_reuses_the_memory_of_its_last_picture() -> None:
    # Without Pillow's block cache the second 48 MB frame is faulted in afresh: about 11,700 faults
    # (4 KiB pages), 25 ms of system CPU a 12 MP render.
    pool = RenderPool("processes", 1, max_pixels=50_000_000)
    try:
        faults = await pool.run(_faults_of_a_second_12_mp_frame)
    finally:
        pool.shutdown()
    assert faults < 1_000
