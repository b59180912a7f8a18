"""`make run` as a newcomer runs it: `python -m devstack`, on a machine where a default port is taken."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.servers import free_port
from devstack.stack import PROJECT_ROOT
from tests import images
from tests.waiting import final_status

DEFAULT_WORKER_METRICS_PORT = 9101
RUNNING = "imagequeue is running"


@pytest.fixture
def busy_metrics_port() -> Iterator[None]:
    """Something else listening on the worker's default metrics port (already so if the bind fails)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_WORKER_METRICS_PORT))
            sock.listen()
        except OSError:
            pass  # taken by another program already: just as good
        yield


def _wait_for_line(log: Path, text: str, process: subprocess.Popen, *, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if text in output:
            return output
        if process.poll() is not None:
            raise AssertionError(f"devstack exited ({process.returncode}) before {text!r}:\n{output[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {text!r} in the devstack output")


@dataclass
class RunningDevstack:
    process: subprocess.Popen
    base_url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def devstack(busy_metrics_port: None, stack_env: dict[str, str], workdir: Path) -> Iterator[RunningDevstack]:
    """`python -m devstack` as `make run` starts it, on the suite's servers (DATABASE_URL, NATS_URL) and
    the default metrics port, until it says it is running."""
    with _running_devstack(stack_env, workdir / "devstack.log") as running:
        yield running


@contextlib.contextmanager
def _running_devstack(
    stack_env: dict[str, str], log: Path, *args: str, **settings: str
) -> Iterator[RunningDevstack]:
    env = {key: value for key, value in os.environ.items() if key != "WORKER_METRICS_PORT"}
    env.update(DATABASE_URL=stack_env["DATABASE_URL"], NATS_URL=stack_env["NATS_URL"], PYTHONUNBUFFERED="1")
    env.update(settings)
    port = free_port()
    with open(log, "wb") as output:
        # Its own session, so a SIGINT to the group reaches every process, as Ctrl-C in a terminal does.
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack", "--port", str(port), "--workers", "1", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_line(log, RUNNING, process, timeout=90)
        yield RunningDevstack(process, f"http://127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def test_make_run_survives_a_busy_worker_metrics_port_and_stops_cleanly_on_ctrl_c(
    devstack: RunningDevstack,
) -> None:
    moved = f"worker 1 metrics {DEFAULT_WORKER_METRICS_PORT} -> "
    assert moved in devstack.output(), devstack.output()[-3000:]
    async with httpx.AsyncClient(base_url=devstack.base_url, timeout=30) as client:
        posted = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})
        assert posted.status_code == 200, posted.text
        status = await final_status(client, posted.json()["task_id"])
    assert status["status"] == "done", status["error"]

    os.killpg(devstack.process.pid, signal.SIGINT)
    assert await asyncio.to_thread(devstack.process.wait, 60) == 0, devstack.output()[-3000:]
    assert "a process exited" not in devstack.output()


async def test_make_run_with_s3_and_no_endpoint_starts_its_own_seaweedfs(
    stack_env: dict[str, str], workdir: Path
) -> None:
    """STORAGE_BACKEND=s3 alone: `make run` starts SeaweedFS, creates the bucket and keeps images there."""
    bucket = f"devstack-{os.getpid()}"
    data_dir = workdir / "devstack-data"
    with _running_devstack(
        stack_env,
        workdir / "devstack-s3.log",
        *("--data-dir", str(data_dir)),  # the developer's .devdata stays untouched
        STORAGE_BACKEND="s3",
        S3_ENDPOINT_URL="",
        S3_BUCKET=bucket,
    ) as devstack:
        assert "S3 (SeaweedFS) at http://127.0.0.1:" in devstack.output()
        assert (data_dir / "seaweed").is_dir(), "SeaweedFS keeps its data in --data-dir too"
        async with httpx.AsyncClient(base_url=devstack.base_url, timeout=30) as client:
            posted = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})
            assert posted.status_code == 200, posted.text
            status = await final_status(client, posted.json()["task_id"])
            assert status["status"] == "done", status["error"]
            output = await client.get(status["processed_url"])
            assert output.status_code == 200 and output.headers["etag"].startswith('"')

        os.killpg(devstack.process.pid, signal.SIGINT)
        assert await asyncio.to_thread(devstack.process.wait, 60) == 0, devstack.output()[-3000:]
