"""Worker and API processes as the fault tests hold them: started, awaited, stopped or killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.stack import stop_process, wait_until_ready
from tests.waiting import eventually


@dataclass
class Started:
    process: subprocess.Popen
    log_file: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]

    async def stop(self) -> int:
        """SIGTERM and wait for the exit, without blocking the event loop the uploads run on."""
        return await asyncio.to_thread(stop_process, self.process)

    async def kill(self) -> None:
        self.process.kill()
        await asyncio.to_thread(self.process.wait)


async def api_ready(api: Started, base_url: str) -> None:
    await asyncio.to_thread(wait_until_ready, base_url, timeout=30, process=api.process)


async def worker_ready(worker: Started, *, timeout: float = 30) -> None:
    """The worker logs this once it fetches: from then on, queued tasks reach it."""

    async def ready() -> bool:
        if "worker ready" in worker.log_file.read_text(errors="replace"):
            return True
        assert worker.process.poll() is None, worker.log_tail()
        return False

    await eventually(
        ready, timeout=timeout, what=lambda: f"'worker ready' in {worker.log_file}: {worker.log_tail()}"
    )


def assert_api_shut_down_cleanly(api: Started, exit_code: int) -> None:
    """uvicorn re-raises the SIGTERM it handled once its shutdown is complete: a clean exit is death
    by SIGTERM after the lifespan's last line, not an exit code 0."""
    assert exit_code == -signal.SIGTERM, api.log_tail()
    assert "Application shutdown complete." in api.log_tail(), api.log_tail()


async def stop_api(api: Started) -> None:
    assert_api_shut_down_cleanly(api, await api.stop())


def children(pid: int) -> set[int]:
    """The processes `pid` started (none once it has ended)."""
    found: set[int] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it may have just ended
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (a worker's fork server, and the render children it made)."""
    found = children(pid)
    for child in list(found):
        found |= descendants(child)
    return found


def send(pids: set[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def alive(pid: int) -> bool:
    """Running, stopped or sleeping: neither gone nor a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
