"""Several API processes on one socket (API_PROCESSES > 1): uvicorn's own supervisor, bounded.

One API process is one core (BENCHMARKS.md, "The whole table on a quiet machine"). With
API_PROCESSES=N, `python -m api.serve` binds the listening sockets and runs uvicorn's `Multiprocess`
supervisor: N children (spawned, so each imports the app afresh) accept connections, and the
parent only watches them. What this module adds to it:

- A listening socket per process (`SO_REUSEPORT`, on Linux): the kernel spreads new connections
  over the N sockets by their addresses' hash. On one shared socket each child's event loop
  accepts every connection waiting, so a client that opens its connections in a burst (16 at once,
  kept alive) often gave all of them to one process and left the other idle (BENCHMARKS.md, "Two
  API processes"). The parent binds them and keeps them open, and a replacement takes its
  predecessor's socket, so the connections the kernel queued on it while it was away are served,
  not refused. Where `SO_REUSEPORT` does not spread connections (not Linux), one shared socket.

- A child whose event loop is stuck is replaced: uvicorn's health check is answered by a thread of
  the child, which answers a stuck loop too, and with a socket per process the kernel would go on
  queueing that process's share of connections for nobody. Here the answer also says how long ago
  the loop last ticked, at once (a late answer would be read by the next check), and a child whose
  loop has not ticked for LOOP_STALL_SECONDS counts as hung, whether it has served yet or not.
- A child dies with the parent (PR_SET_PDEATHSIG, Linux): a supervisor killed outright leaves no
  process serving the port.
- Start-up failures stop everything instead of spinning: a child that exits with uvicorn's code
  for a failed start-up (an unimportable app, a lifespan that failed), or dies before serving,
  while no other child serves, makes the parent stop the others and exit STARTUP_FAILED, as one
  process would have. uvicorn stops only on its code 3 and replaces the others for ever. With a
  sibling serving, the death counts towards the crash-loop bound below instead.
- A child that dies after serving is replaced, at most MAX_REPLACEMENTS in REPLACEMENT_WINDOW_SECONDS
  (then the parent stops with CRASH_LOOP: an orchestrator restarting the whole thing with its
  back-off is better than a loop here). Its Prometheus files are marked dead.
- Stopping (SIGTERM, SIGINT) is bounded: the parent closes its copies of the listening sockets (so
  once the children stop accepting, new connections are refused, not queued for nobody), the
  children get SIGTERM and finish in-flight requests within --timeout-graceful-shutdown; one still
  running SHUTDOWN_SLACK_SECONDS later is killed. A SIGHUP's rolling restart waits as long for each.
- Another server already on the port is an error (EADDRINUSE), as with one process: a probe binds
  it without SO_REUSEPORT first, as a second copy started by mistake would otherwise join the group.
- Metrics: the parent makes a private folder for prometheus_client's multiprocess files, hands it to
  the children in PROMETHEUS_MULTIPROC_DIR (api/metrics.py reads it), and removes it when it exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.server import Server
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("uvicorn.error")

# prometheus_client's own variable: it chooses where counters live when it is first imported.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
STARTUP_FAILED = STARTUP_FAILURE  # 3, uvicorn's exit code for a server that could not start
CRASH_LOOP = 1
MAX_REPLACEMENTS = 10
REPLACEMENT_WINDOW_SECONDS = 60.0
SHUTDOWN_SLACK_SECONDS = 10.0
# A child whose loop has not ticked (uvicorn's main loop ticks every 0.1 s) for this long is hung:
# the health check's own timeout (api.serve's HEALTHCHECK_SECONDS), as a silent child would be.
LOOP_STALL_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


class _TickingServer(Server):
    """uvicorn's server, noting when its main loop last ticked, and when it has left it."""

    last_tick = 0.0
    loop_done = False

    async def on_tick(self, counter: int) -> bool:
        self.last_tick = time.monotonic()
        return await super().on_tick(counter)

    async def main_loop(self) -> None:
        try:
            await super().main_loop()
        finally:
            self.loop_done = True  # stopping (however it was asked): no longer ticking is right

    def stalled_for(self) -> float:
        """Seconds since the serving loop last ticked; 0 before it started and once it has left."""
        if not self.started or self.last_tick == 0 or self.loop_done or self.should_exit:
            return 0.0
        return time.monotonic() - self.last_tick


class ServedProcess(Process):
    """One child: uvicorn's, with a health check that vouches for the event loop, and dying with
    the parent (see the module docstring)."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.parent_pid = os.getpid()

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = _TickingServer(config=self.config)
        return self._server

    def pong(self) -> None:
        """In the child: answer a ping at once with (started, seconds the loop has been stalled)."""
        self.child_conn.recv()
        server = self.server
        assert isinstance(server, _TickingServer)
        self.child_conn.send((server.started, server.stalled_for()))

    def _healthcheck(self, timeout: float) -> bool | None:
        """In the parent: whether the child has started serving, or None if it is hung (no answer in
        `timeout`, or its loop stalled for LOOP_STALL_SECONDS). Answers a timed-out ping left in
        the pipe are read and dropped first, so each check reads its own."""
        try:
            while self.parent_conn.poll():
                self.parent_conn.recv()
            self.parent_conn.send(b"ping")
            if not self.parent_conn.poll(timeout):
                return None
            started, stalled = self.parent_conn.recv()
        except (OSError, EOFError, pickle.UnpicklingError, TypeError, ValueError):
            return None
        if stalled >= LOOP_STALL_SECONDS:
            log.warning("API process %s: its event loop has not run for %.0f s", self.pid, stalled)
            return None
        return bool(started)

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover (child)
        if sys.platform.startswith("linux"):
            # Sent when the thread that spawned this child ends: the parent spawns from its main
            # thread only.
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM)) != 0:
                log.warning("PR_SET_PDEATHSIG failed (errno %d)", ctypes.get_errno())
            if os.getppid() != self.parent_pid:  # the parent died before the prctl
                return
        _ = self.server  # made here, before the health-check thread could make a second one
        super().target(sockets)


class Supervisor(Multiprocess):
    """uvicorn's supervisor with the bounds above; `run()` returns the exit code."""

    def __init__(self, config: Config, sockets: list[socket.socket], metrics_dir: Path) -> None:
        """`sockets`: one per process (process i serves sockets[i]), or one that all of them share."""
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
            if process.process.is_alive():
                health = process._healthcheck(timeout)
                if health is True:
                    self._served.add(pid)
                    continue
                if health is False and pid not in self._served:
                    continue  # still starting (its start-up has its own timeouts: the app's)
            process.kill()  # dead, or alive and not answering or stalled (hung): gone either way
            process.join()
            code = process.exitcode
            # uvicorn's own code for a failed start-up (the app, its lifespan, the socket), or a death
            # before serving, while no sibling serves: each replacement would fail the same way.
            # With a sibling serving (a config file edited since?), the crash-loop bound decides.
            if (code == STARTUP_FAILED or pid not in self._served) and not self._any_serving():
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
            replacement = ServedProcess(self.config, self._sockets_of(index))
            replacement.start()
            self.processes[index] = replacement

    def init_processes(self) -> None:
        for index in range(self.processes_num):
            process = ServedProcess(self.config, self._sockets_of(index))
            process.start()
            self.processes.append(process)

    def restart_all(self) -> None:
        """SIGHUP: uvicorn's rolling restart, each replacement on its predecessor's socket."""
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = ServedProcess(self.config, self._sockets_of(index))
            new.start()
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                log.error("API process %s was not ready in time; keeping %s", new.pid, old.pid)
                return
            self._served.add(new.pid)  # type: ignore[arg-type]  # started
            old.terminate()
            self._join_or_kill(old, self._stop_deadline())
            mark_process_dead(old.pid, str(self.metrics_dir))
            self.processes[index] = new

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: the API's processes are API_PROCESSES (restart to change it)")

    def handle_ttou(self) -> None:
        log.warning("SIGTTOU ignored: the API's processes are API_PROCESSES (restart to change it)")

    def _sockets_of(self, index: int) -> list[socket.socket]:
        return [self.sockets[index]] if len(self.sockets) > 1 else self.sockets

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

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()  # the children hold theirs until they stop accepting
        super().terminate_all()

    def join_all(self) -> None:
        """Wait for the children's graceful shutdown, bounded; kill what outlives it."""
        deadline = self._stop_deadline()
        for process in self.processes:
            self._join_or_kill(process, deadline)

    def _stop_deadline(self) -> float:
        return time.monotonic() + (self.config.timeout_graceful_shutdown or 0) + SHUTDOWN_SLACK_SECONDS

    @staticmethod
    def _join_or_kill(process: Process, deadline: float) -> None:
        process.process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            log.warning("API process %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()

    def _stop(self, code: int, reason: str) -> None:
        self.failure = (code, reason)
        self.should_exit.set()


def listening_sockets(config: Config, count: int) -> list[socket.socket]:
    """A listening socket per process on the configured address (`SO_REUSEPORT`), or one shared
    socket where the kernel would not spread connections over several (see the module docstring)."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT") or config.uds or config.fd:
        return [config.bind_socket()]
    family = socket.AF_INET6 if config.host and ":" in config.host else socket.AF_INET
    port = config.port
    sockets: list[socket.socket] = []
    try:
        if port:
            # Without SO_REUSEPORT: fails if anything listens there already (another copy of us).
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((config.host, port))
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((config.host, port))
            port = sock.getsockname()[1]  # port 0: the others join the port the first one got
            # Listening from now on: a connection that arrives before its process is up waits in
            # the socket's queue instead of being refused.
            sock.listen(config.backlog)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILED)
    log.info("Uvicorn running on http://%s:%d, %d processes (Press CTRL+C to quit)", config.host, port, count)
    return sockets


def make_metrics_dir() -> Path:
    """A fresh folder, this user's only, for the children's metric files (set in the environment
    they inherit)."""
    path = Path(tempfile.mkdtemp(prefix="imagequeue-api-metrics-"))
    os.environ[METRICS_DIR_VARIABLE] = str(path)
    return path


def remove_metrics_dir(path: Path) -> None:
    os.environ.pop(METRICS_DIR_VARIABLE, None)
    shutil.rmtree(path, ignore_errors=True)
