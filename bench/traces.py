"""What tracing costs: CPU per upload (API) and per image (worker) with traces off, on, and in the
code from before tracing existed, taking turns in one run.

    .venv/bin/python -m bench.traces --before 9265df5~1 [--reps 3] [--uploads 1500]

`off` and `on` are the working tree, without and with OTEL_EXPORTER_OTLP_ENDPOINT (spans go to an
OTLP/HTTP sink this process runs, which answers 200 and keeps nothing); `before` is a git ref's
tree, as bench.compare runs it. CPU time is what the processes themselves used (their own figure
from the kernel), steadier than a rate on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench import report
from bench.compare import export_tree, report_cpu
from bench.images import photo_jpeg
from bench.stack import BenchStack
from bench.suite import SMALL, Plan, Suite
from devstack.stack import PROJECT_ROOT


@contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that reads each export and answers 200 (an empty response message)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def once(suite: Suite, root: Path, env: dict[str, str], uploads: int) -> dict[str, Any]:
    """`uploads` small uploads at 16 at a time (API CPU), then one worker drains them (worker CPU)."""
    await suite.stack.empty()
    async with suite.stack.api(root=root, env=env) as api:
        cpu = report_cpu(api.process.pid)
        result = await suite.load(api.port, "small", count=uploads, concurrency=16, max_seconds=120)
        api_cpu = report_cpu(api.process.pid) - cpu
    accepted = max(result["statuses"].get("200", 0), 1)
    async with suite.stack.workers(1, root=root, env=env) as (pid,):
        cpu = report_cpu(pid)
        counts = await suite.stack.wait_final(accepted, within=600)
        worker_cpu = report_cpu(pid) - cpu
    done = max(counts.get("done", 0), 1)
    return {"api_cpu_ms": api_cpu / accepted * 1000, "worker_cpu_ms": worker_cpu / done * 1000}


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-traces-"))
    before_root = export_tree(args.before, workdir / "before")
    stack = BenchStack(workdir)
    try:
        small = workdir / "small.jpg"
        small.write_bytes(photo_jpeg(*SMALL))
        await stack.start()
        suite = Suite(stack, Plan.quick(args.reps), {"small": small})
        with otlp_sink() as sink:
            variants = {
                "before": (before_root, {}),
                "off": (PROJECT_ROOT, {}),
                "on": (PROJECT_ROOT, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink}),
            }
            runs: list[dict[str, Any]] = []
            names = list(variants)
            for rep in range(args.reps):
                # Each repetition starts with another variant: whatever the previous run leaves behind
                # (a busy autovacuum, a warm cache) falls on each in turn.
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    root, env = variants[name]
                    runs.append({"variant": name, **await once(suite, root, env, args.uploads)})
                print(f"repetition {rep + 1} of {args.reps} done", flush=True)
        print(f"\nbefore: {args.before}; off, on: working tree; {args.uploads} uploads of {SMALL}\n")
        print("| figure | before | off | on | off / before | on / off |\n|---|---|---|---|---|---|")
        for key in ("api_cpu_ms", "worker_cpu_ms"):
            of = {name: [run[key] for run in runs if run["variant"] == name] for name in variants}
            off_ratio = report.Spread.of(a / b for a, b in zip(of["off"], of["before"], strict=True))
            on_ratio = report.Spread.of(a / b for a, b in zip(of["on"], of["off"], strict=True))
            shown = " | ".join(report.Spread.of(of[name]).show(2) for name in variants)
            print(f"| {key} | {shown} | {off_ratio.show(2)} | {on_ratio.show(2)} |")
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the code from before tracing")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--uploads", type=int, default=1500)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
