"""`python -m api.serve`: the API under uvicorn with the HTTP limits of api/http_limits.py.

What Dockerfile.api's CMD, `make run` (devstack) and the tests all start, so each runs the same
limits: they come from the HTTP_* settings (config.py), whose defaults hold where nothing sets them.
The options are uvicorn's own names for the few the deployments choose.

API_PROCESSES (or `--processes N`) > 1 serves the port from N processes under a supervisor
(api/supervisor.py); 1, the default, is one uvicorn server in this process, as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
from typing import Any

import uvicorn

from api.http_limits import HttpLimits, limited_protocol
from api.supervisor import Supervisor, listening_sockets, make_metrics_dir, remove_metrics_dir
from config import MAX_API_PROCESSES, ConfigError, Settings, get_settings

# How long a child may leave the supervisor's health check unanswered before it counts as hung and
# is replaced (uvicorn's default is 5 s; a loaded machine can starve a process longer than that).
HEALTHCHECK_SECONDS = 10

# The settings the limits come from (read by http_limits below).
LIMIT_SETTINGS = (
    "HTTP_MAX_HEADER_BYTES",
    "HTTP_MAX_HEADERS",
    "HTTP_HEADER_TIMEOUT_SECONDS",
    "HTTP_BODY_IDLE_TIMEOUT_SECONDS",
    "HTTP_BODY_MIN_BYTES_PER_SECOND",
    "HTTP_MAX_CONNECTIONS",
)
# Open files besides the connections: the database pool, NATS, logs, files being read or written.
SPARE_FILES = 256


def http_limits(settings: Settings) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=settings.http_max_header_bytes,
        max_headers=settings.http_max_headers,
        header_timeout=settings.http_header_timeout_seconds,
        body_idle_timeout=settings.http_body_idle_timeout_seconds,
        body_min_rate=settings.http_body_min_bytes_per_second,
        max_connections=settings.http_max_connections,
    )


class ServeConfig(uvicorn.Config):
    """uvicorn's Config serving our limited httptools protocol. The protocol class is made from
    `limits` when the config is loaded, in the process that serves: with several processes this
    config is pickled to each child, and a class made at run time does not pickle (a frozen
    dataclass of limits does)."""

    def __init__(self, app: str, *, limits: HttpLimits, **options: Any) -> None:
        super().__init__(app, http="httptools", **options)
        self.limits = limits

    def load(self) -> None:
        super().load()
        self.http_protocol_class = limited_protocol(self.limits)


def _open_files_for(connections: int) -> int:
    """Raise this process's open-file limit as far as allowed, so the connection cap (and not
    EMFILE, which stops uvicorn accepting anyone, /health included) is what bounds connections;
    return the connections that fit. Each connection may hold an upload's temp file too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return connections
    return max(1, (soft - SPARE_FILES) // 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="api.main:app", help="the ASGI app (default api.main:app)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    # Trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS (uvicorn's default: 127.0.0.1).
    parser.add_argument("--proxy-headers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--timeout-keep-alive", type=int, default=30)
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=20)
    parser.add_argument("--no-access-log", dest="access_log", action="store_false")
    parser.add_argument(
        "--processes",
        type=int,
        help=f"API processes serving the port, 1 to {MAX_API_PROCESSES} (default: API_PROCESSES)",
    )
    args = parser.parse_args(argv)
    if args.processes is not None and not 1 <= args.processes <= MAX_API_PROCESSES:
        parser.error(f"--processes must be a whole number from 1 to {MAX_API_PROCESSES}")
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    limits = http_limits(settings)
    processes = args.processes or settings.api_processes
    connections = _open_files_for(limits.max_connections)
    if connections < limits.max_connections:
        print(
            f"HTTP_MAX_CONNECTIONS {limits.max_connections} lowered to {connections}: the open-file limit "
            "allows no more",
            file=sys.stderr,
        )
        limits = dataclasses.replace(limits, max_connections=connections)
    config = ServeConfig(
        args.app,
        limits=limits,
        host=args.host,
        port=args.port,
        proxy_headers=args.proxy_headers,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        timeout_worker_healthcheck=HEALTHCHECK_SECONDS,
        access_log=args.access_log,
        workers=processes,
    )
    if processes > 1:
        return _serve_in_processes(config)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3  # uvicorn's own exit code for a failed start-up


def _serve_in_processes(config: ServeConfig) -> int:
    metrics_dir = make_metrics_dir()
    try:
        sockets = listening_sockets(config, config.workers)
        try:
            return Supervisor(config, sockets, metrics_dir).run()
        finally:
            for sock in sockets:
                sock.close()
    finally:
        remove_metrics_dir(metrics_dir)


if __name__ == "__main__":
    sys.exit(main())
