"""`python -m api.serve`: the API under uvicorn with the HTTP limits of api/http_limits.py.

What Dockerfile.api's CMD, `make run` (devstack) and the tests all start, so each runs the same
limits: they come from the HTTP_* settings (config.py), whose defaults hold where nothing sets them.
The options are uvicorn's own names for the few the deployments choose.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys

import uvicorn

from api.http_limits import HttpLimits, limited_protocol
from config import ConfigError, Settings, get_settings

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
    args = parser.parse_args(argv)
    try:
        limits = http_limits(get_settings())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    connections = _open_files_for(limits.max_connections)
    if connections < limits.max_connections:
        print(
            f"HTTP_MAX_CONNECTIONS {limits.max_connections} lowered to {connections}: the open-file limit "
            "allows no more",
            file=sys.stderr,
        )
        limits = dataclasses.replace(limits, max_connections=connections)
    config = uvicorn.Config(
        args.app,
        host=args.host,
        port=args.port,
        http=limited_protocol(limits),
        proxy_headers=args.proxy_headers,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        access_log=args.access_log,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3  # uvicorn's own exit code for a failed start-up


if __name__ == "__main__":
    sys.exit(main())
