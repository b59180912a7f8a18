"""Several API processes on one socket (API_PROCESSES > 1): uvicorn's own supervisor, bounded.

One API process is one core (BENCHMARKS.md, "The whole table on a quiet machine"). With
API_PROCESSES=N, `python -m api.serve` binds the socket once and runs uvicorn's `Multiprocess`
supervisor: N children (spawned, so each imports the app afresh) accept on that socket, and the
parent only watches them. What this module adds to it:

- Start-up failures stop everything instead of spinning: a child that exits with uvicorn's code
  for a failed start-up (an unimportable app, a lifespan that failed), or any child that dies while
  none has served yet (an app that raises as it is built, a crash), makes the parent stop the
  others and exit STARTUP_FAILED, as one process would have. uvicorn stops only on its code 3 and
  replaces the others for ever.
- A child that dies after serving is replaced, at most MAX_REPLACEMENTS in REPLACEMENT_WINDOW_SECONDS
  (then the parent stops with CRASH_LOOP: an orchestrator restarting the whole thing with its
  back-off is better than a loop here). Its Prometheus files are marked dead.
- Stopping (SIGTERM, SIGINT) is bounded: the children get SIGTERM and finish in-flight requests
  within --timeout-graceful-shutdown; one still running SHUTDOWN_SLACK_SECONDS later is killed.
- Metrics: the parent makes a private folder for prometheus_client's multiprocess files, hands it to
  the children in PROMETHEUS_MULTIPROC_DIR (api/metrics.py reads it), and removes it when it exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from socket import socket

from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("uvicorn.error")

# prometheus_client's own variable: it chooses where counters live when it is first imported.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
STARTUP_FAILED = STARTUP_FAILURE  # 3, uvicorn's exit code for a server that could not start
CRASH_LOOP = 1
MAX_REPLACEMENTS = 10
REPLACEMENT_WINDOW_SECONDS = 60.0
SHUTDOWN_SLACK_SECONDS = 10.0


class Supervisor(Multiprocess):
    """uvicorn's supervisor with the bounds above; `run()` returns the exit code."""

    def __init__(self, config: Config, sockets: list[socket], metrics_dir: Path) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir
        self.failure: tuple[int, str] | None = None
        # Children that have said they serve (uvicorn's health check answers with `started`).
        self._served: set[int] = set()
        self._replaced: deque[float] = deque()

    def run(self) -> int:  # type: ignore[override]
        super().run()
        if self.failure is not None:
            code, reason = self.failure
            log.error("%s; stopped the API processes", reason)
            return code
        return 0

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        timeout = self.config.timeout_worker_healthcheck
        for index, process in enumerate(self.processes):
            pid = process.pid
            assert pid is not None  # started
            if pid in self._served:
                if process.is_alive(timeout=timeout):
                    continue
            elif process.process.is_alive():
                if process.is_ready(timeout=timeout):
                    self._served.add(pid)
                continue  # still starting (its start-up has its own timeouts: the app's)
            process.kill()  # dead, or alive and not answering (hung): gone either way
            process.join()
            code = process.exitcode
            # uvicorn's own code for a failed start-up (the app, its lifespan, the socket), or a death
            # before any process ever served: each replacement would fail the same way.
            if code == STARTUP_FAILED or (pid not in self._served and not self._any_serving()):
                self._stop(STARTUP_FAILED, f"API process {pid} exited with code {code} before serving")
                return
            self._served.discard(pid)
            mark_process_dead(pid, str(self.metrics_dir))
            now = time.monotonic()
            self._replaced.append(now)
            while self._replaced and now - self._replaced[0] > REPLACEMENT_WINDOW_SECONDS:
                self._replaced.popleft()
            if len(self._replaced) > MAX_REPLACEMENTS:
                window = f"{REPLACEMENT_WINDOW_SECONDS:.0f} s"
                self._stop(CRASH_LOOP, f"API processes died {len(self._replaced)} times within {window}")
                return
            log.warning("API process %s died (exit code %s); starting another", pid, code)
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[index] = replacement

    def _any_serving(self) -> bool:
        """Whether some process has served, asked now (one may have started since the last tick)."""
        timeout = self.config.timeout_worker_healthcheck
        for process in self.processes:
            if process.pid in self._served:
                return True
            if process.process.is_alive() and process.is_ready(timeout=timeout):
                self._served.add(process.pid)  # type: ignore[arg-type]
                return True
        return False

    def join_all(self) -> None:
        """Wait for the children's graceful shutdown, bounded; kill what outlives it."""
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0) + SHUTDOWN_SLACK_SECONDS
        for process in self.processes:
            process.process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("API process %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()

    def _stop(self, code: int, reason: str) -> None:
        self.failure = (code, reason)
        self.should_exit.set()


def make_metrics_dir() -> Path:
    """A fresh folder, this user's only, for the children's metric files (set in the environment
    they inherit)."""
    path = Path(tempfile.mkdtemp(prefix="imagequeue-api-metrics-"))
    os.environ[METRICS_DIR_VARIABLE] = str(path)
    return path


def remove_metrics_dir(path: Path) -> None:
    os.environ.pop(METRICS_DIR_VARIABLE, None)
    shutil.rmtree(path, ignore_errors=True)
