"""The whole system as local processes: servers, migrations, the API and workers.

Used by `make run` (`python -m devstack`) and by the tests' fixtures, so both start things the
same way. Every process gets its settings through the environment, exactly as in production.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.servers import LocalNats, LocalPostgres, free_port, port_is_free

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NATS_PORT = 4222


def migrate(database_url: str, *, python: str = sys.executable, root: Path = PROJECT_ROOT) -> None:
    """`alembic upgrade head` against `database_url`, as the compose `migrate` service runs it
    (`python` and `root`: another interpreter and code tree, such as an image's own venv and files)."""
    result = subprocess.run(
        [python, "-m", "alembic", "upgrade", "head"],
        cwd=root,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed:\n{result.stderr[-3000:]}")


@dataclass
class LocalServers:
    """PostgreSQL and NATS with their data under `data_dir` (kept between runs unless deleted)."""

    data_dir: Path
    nats_port: int | None = None
    postgres: LocalPostgres = field(init=False)
    nats: LocalNats = field(init=False)

    def __post_init__(self) -> None:
        port = self.nats_port
        if port is None:
            port = DEFAULT_NATS_PORT if port_is_free(DEFAULT_NATS_PORT) else free_port()
        self.postgres = LocalPostgres(self.data_dir / "postgres")
        self.nats = LocalNats(self.data_dir / "nats", port, log_file=self.data_dir / "nats.log")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.postgres.start()
        self.nats.start()

    def stop(self) -> None:
        self.nats.stop()
        self.postgres.stop()

    def environment(self, **overrides: str) -> dict[str, str]:
        return {"DATABASE_URL": self.postgres.url(), "NATS_URL": self.nats.url, **overrides}


def start_api(
    env: Mapping[str, str],
    port: int,
    *,
    log_file: Path | None = None,
    app: str = "api.main:app",
    extra_args: Sequence[str] = (),
    root: Path = PROJECT_ROOT,
    python: str = sys.executable,
) -> subprocess.Popen:
    """`python -m api.serve` (uvicorn with the HTTP limits, as Dockerfile.api runs it) serving `app`
    from the code in `root` (the benchmarks also start their bare endpoint, and an earlier version of
    the code, with the same settings; the tests an image's own venv). Code older than the launcher is
    served by plain uvicorn."""
    server = ("api.serve", "--app", app) if (root / "api" / "serve.py").exists() else ("uvicorn", app)
    return _start(
        [
            *(python, "-m", *server, "--host", "127.0.0.1", "--port", str(port), "--proxy-headers"),
            # As in Dockerfile.api: outlive clients' keep-alive expiry so reused connections are not cut.
            *("--timeout-keep-alive", "30", "--timeout-graceful-shutdown", "20"),
            *extra_args,
        ],
        env,
        log_file,
        root,
    )


@contextlib.contextmanager
def running_api(
    env: Mapping[str, str], *, log_file: Path, root: Path = PROJECT_ROOT, python: str = sys.executable
) -> Iterator[str]:
    """An API process on a free port, ready (`/ready` answered 200); yields its base URL."""
    port = free_port()
    process = start_api(env, port, log_file=log_file, root=root, python=python)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, timeout=60, process=process)
        yield base_url
    except Exception:
        print(log_file.read_text(errors="replace")[-5000:])  # why it did not start, in the test output
        raise
    finally:
        stop_process(process)


def start_worker(
    env: Mapping[str, str],
    *,
    log_file: Path | None = None,
    root: Path = PROJECT_ROOT,
    python: str = sys.executable,
) -> subprocess.Popen:
    return _start([python, "-m", "worker"], env, log_file, root)


@contextlib.contextmanager
def worker_process(env: Mapping[str, str], *, log_file: Path) -> Iterator[subprocess.Popen]:
    """A worker process for the block; it must stop cleanly (exit 0) at the end, or its log's tail
    is raised."""
    process = start_worker(env, log_file=log_file)
    try:
        yield process
    finally:
        if (code := stop_process(process)) != 0:
            raise RuntimeError(f"worker exited {code}: {log_file.read_text(errors='replace')[-3000:]}")


def _start(
    command: list[str], env: Mapping[str, str], log_file: Path | None, root: Path = PROJECT_ROOT
) -> subprocess.Popen:
    output = open(log_file, "ab") if log_file else None  # noqa: SIM115
    try:
        return subprocess.Popen(
            command,
            cwd=root,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )
    finally:
        if output is not None:
            output.close()  # the child has its own copy


def wait_until_ready(base_url: str, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll `/ready` until the API reports its database and NATS reachable."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the API exited with code {process.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{base_url}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{base_url}/ready did not answer 200 within {timeout} s ({last_error})")


def stop_process(process: subprocess.Popen, *, timeout: float = 30) -> int:
    """SIGTERM, wait for a graceful exit, SIGKILL if it does not come. Returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
