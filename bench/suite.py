"""`make bench`: measured speed of imagequeue, scenario beside scenario, on a throwaway stack.

    .venv/bin/python -m bench.suite [--quick] [--reps 3] [--out bench/results]

Starts PostgreSQL, NATS, the API and worker processes on 127.0.0.1 (devstack, as `make test` does),
runs every scenario `--reps` times, interleaved (so a burst of other load on the machine spreads over
all of them rather than spoiling one), and writes `bench/results/<date>.json`, a Markdown table and
PNG charts (see bench/report.py). Each figure is the median of the repetitions with their min–max.

Scenarios (the issue's numbering):
1. ingest: uploads/s and p50/p99 latency at concurrency 1, 16, 64 for a 0.27 MP and a 12 MP JPEG,
   one API process, no worker; beside it the bare endpoint (bench/bare_app.py), and the load
   generator against a sink that answers at once (its own ceiling).
2. queue overhead: upload → done at concurrency 1, from the task's timestamps and from the client,
   minus Pillow's own time for that image (worker.imaging.watermark, in this process).
3. drain: a queue of tasks emptied by 1 and by 2 worker processes, beside a bare Pillow loop.
4. end to end: uploads at concurrency 16 with 2 worker processes: images/s, first upload to last done.
5. memory: the API's RSS growth while an 80 MB upload is refused; a worker's peak RSS on 24 MP and
   50 MP JPEGs (default processing, and the `thumbnail` preset when the API accepts it).
6. hostile traffic (full runs only, once: about 2.5 minutes): normal uploads alone, then the same
   while every attack class of issue 14 runs at once (bench/hostile.py).

Every load is bounded in count and in time and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import hostile, machine, report, sidebyside
from bench.images import photo_jpeg
from bench.load import HOST
from bench.pillow_baseline import bare_loop, render_function
from bench.stack import Api, BenchStack
from devstack.servers import free_port

SMALL = (600, 450)  # 0.27 MP, about 40 KB
LARGE = (4000, 3000)  # 12 MP, about 3 MB
MP24 = (6000, 4000)
MP50 = (8160, 6120)  # 49.9 MP: just inside the default MAX_IMAGE_PIXELS (50,000,000)
REFUSED_UPLOAD_BYTES = 80 * 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """How much of each scenario to run: `make bench` (full) and `make bench-quick`."""

    reps: int
    ingest_images: tuple[str, ...]
    concurrencies: tuple[int, ...]
    ingest_seconds: float
    ingest_counts: dict[str, int]
    overhead_uploads: int
    drain_tasks: int
    e2e_uploads: int
    bare_loop_seconds: float
    worker_memory_images: tuple[str, ...]
    # Also drain with WORKER_CONCURRENCY=1 (one render thread per process), this many tasks (0: not):
    # the default (CPU count) lets one process use both cores, so 1 → 2 processes says little alone.
    single_thread_drain_tasks: int = 0
    # Each phase of the hostile-traffic scenario (0: not run). Run once, not `reps` times: its two
    # phases of a minute each would not fit three times in the suite's 15 minutes.
    hostile_seconds: float = 0.0

    @classmethod
    def full(cls, reps: int) -> Plan:
        return cls(
            reps=reps,
            ingest_images=("small", "large"),
            concurrencies=(1, 16, 64),
            ingest_seconds=5.0,
            ingest_counts={"small": 3000, "large": 300},
            overhead_uploads=150,
            drain_tasks=2000,
            e2e_uploads=1000,
            bare_loop_seconds=6.0,
            worker_memory_images=("24mp", "50mp"),
            single_thread_drain_tasks=1000,
            hostile_seconds=60.0,
        )

    @classmethod
    def quick(cls, reps: int) -> Plan:
        return cls(
            reps=reps,
            ingest_images=("small",),
            concurrencies=(16,),
            ingest_seconds=3.0,
            ingest_counts={"small": 1500},
            overhead_uploads=40,
            drain_tasks=300,
            e2e_uploads=300,
            bare_loop_seconds=2.0,
            worker_memory_images=(),
        )


class Suite:
    def __init__(self, stack: BenchStack, plan: Plan, files: dict[str, Path]) -> None:
        self.stack = stack
        self.plan = plan
        self.files = files
        self.cpu = machine.CpuAccount(stack.postmaster_pid())

    async def timed(self, name: str, scenario: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        print(f"— {name}", flush=True)
        before = self.cpu.snapshot()
        started = time.monotonic()
        result = await scenario()
        result["cpu"] = machine.CpuAccount.between(before, self.cpu.snapshot())
        result["seconds"] = round(time.monotonic() - started, 1)
        print(f"  {result['seconds']} s, other load {result['cpu']['other_cpu_share']:.0%}", flush=True)
        return result

    # -- the load generator, in a process of its own --------------------------------------------

    async def load(
        self,
        port: int,
        image: str,
        *,
        count: int,
        concurrency: int,
        max_seconds: float,
        warmup: int = 0,
        fields: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        command = [
            *(sys.executable, "-m", "bench.load", "send", "--port", str(port)),
            *("--file", str(self.files[image]), "--count", str(count)),
            *("--concurrency", str(concurrency), "--max-seconds", str(max_seconds)),
            *("--warmup", str(warmup)),
        ]
        for name, value in (fields or {}).items():
            command += ["--field", f"{name}={value}"]
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"the load generator failed with code {process.returncode}")
        return json.loads(output)

    # -- 1. ingest ------------------------------------------------------------------------------

    async def ingest(self) -> dict[str, Any]:
        plan = self.plan
        runs: list[dict[str, Any]] = []
        await self.stack.empty()
        sink_port = free_port()
        sink = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.load", "sink", "--port", str(sink_port)
        )
        try:
            async with self.stack.api() as api, self.stack.api(app="bench.bare_app:app", name="bare") as bare:
                await _wait_port(sink_port)
                targets = {"api": api, "bare": bare, "sink": None}
                for rep in range(plan.reps):
                    for image in plan.ingest_images:
                        for concurrency in plan.concurrencies:
                            for endpoint, target in targets.items():
                                if endpoint == "sink" and concurrency != 16:
                                    continue  # the generator's ceiling at the target's concurrency
                                port = sink_port if target is None else target.port
                                runs.append(
                                    await self.ingest_once(endpoint, target, port, image, concurrency, rep)
                                )
                                await self.stack.empty()
        finally:
            sink.terminate()
            await sink.wait()
        return {"runs": runs}

    async def ingest_once(
        self, endpoint: str, target: Api | None, port: int, image: str, concurrency: int, rep: int
    ) -> dict[str, Any]:
        plan = self.plan
        pid = target.process.pid if target is not None else None
        cpu_before = machine.process_cpu(pid) if pid else 0.0
        services_before = self.services_cpu()
        sessions_before = await self.stack.sessions_opened()
        result = await self.load(
            port,
            image,
            count=plan.ingest_counts[image] if concurrency > 1 else plan.ingest_counts[image] // 5,
            concurrency=concurrency,
            max_seconds=plan.ingest_seconds,
            warmup=max(concurrency, 20 if image == "small" else 5),
        )
        server_cpu = (machine.process_cpu(pid) - cpu_before) if pid else 0.0
        services = {name: cpu - services_before[name] for name, cpu in self.services_cpu().items()}
        # Each new PostgreSQL session is a forked backend and a handshake: a pool too small churns.
        sessions = await self.stack.sessions_opened() - sessions_before
        ok = result["statuses"].get("200", 0)
        done = len(result["latencies"])
        errors = done - ok + sum(result["transport_errors"].values())
        return {
            "endpoint": endpoint,
            "image": image,
            "concurrency": concurrency,
            "rep": rep,
            "requests": done,
            "errors": errors,
            "rate": ok / result["elapsed"],
            "p50_ms": report.percentile(result["latencies"], 0.50) * 1000,
            "p99_ms": report.percentile(result["latencies"], 0.99) * 1000,
            "server_cpu_ms_per_request": server_cpu / max(done, 1) * 1000,
            "loader_cpu_ms_per_request": result["cpu_seconds"] / max(done, 1) * 1000,
            "postgres_cpu_ms_per_request": services["postgres"] / max(done, 1) * 1000,
            "nats_cpu_ms_per_request": services["nats"] / max(done, 1) * 1000,
            "postgres_sessions_opened": sessions,
        }

    def services_cpu(self) -> dict[str, float]:
        """CPU seconds so far of PostgreSQL (postmaster and its backends) and of nats-server."""
        return {
            "postgres": machine.tree_cpu(self.stack.postmaster_pid()),
            "nats": machine.process_cpu(self.stack.nats_pid()),
        }

    # -- 2. queue overhead ----------------------------------------------------------------------

    async def queue_overhead(self) -> dict[str, Any]:
        render = render_function()
        pillow_ms: list[float] = []
        work = self.stack.workdir / "pillow-time"
        for _ in range(30):
            started = time.perf_counter()
            render(self.files["small"], work)
            pillow_ms.append((time.perf_counter() - started) * 1000)
        work.unlink(missing_ok=True)
        pillow = statistics.median(pillow_ms)
        runs = []
        async with self.stack.api() as api:
            for rep in range(self.plan.reps):
                await self.stack.empty()
                async with self.stack.workers(1):
                    runs.append(await self.overhead_once(api, rep, pillow))
        return {"pillow_ms": pillow, "pillow_ms_min": min(pillow_ms), "runs": runs}

    async def overhead_once(self, api: Api, rep: int, pillow_ms: float) -> dict[str, Any]:
        data = self.files["small"].read_bytes()
        client_ms: list[float] = []
        ids: list[int] = []
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
            for index in range(self.plan.overhead_uploads + 5):
                started = time.perf_counter()
                answer = await client.post("/upload", files={"file": ("bench.jpg", data, "image/jpeg")})
                answer.raise_for_status()
                task_id = answer.json()["task_id"]
                deadline = time.monotonic() + 30
                # Polled every 2 ms: the client figure is late by 1 ms on average (at most 2 ms + a GET).
                while (await client.get(f"/status/{task_id}")).json()["status"] not in ("done", "failed"):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"task {task_id} not done within 30 s")
                    await asyncio.sleep(0.002)
                if index >= 5:  # the first few warm up connections and caches
                    client_ms.append((time.perf_counter() - started) * 1000)
                    ids.append(task_id)
        rows = await self.stack.db.fetch(
            "SELECT status, extract(epoch FROM finished_at - upload_time) * 1000 AS total,"
            " extract(epoch FROM started_at - upload_time) * 1000 AS wait,"
            " extract(epoch FROM finished_at - started_at) * 1000 AS work"
            " FROM image_tasks WHERE id = ANY($1::int[])",
            ids,
        )
        server = [float(row["total"]) for row in rows]
        return {
            "rep": rep,
            "tasks": len(ids),
            "failed": sum(row["status"] != "done" for row in rows),
            "server_p50_ms": report.percentile(server, 0.5),
            "server_p99_ms": report.percentile(server, 0.99),
            "client_p50_ms": report.percentile(client_ms, 0.5),
            "client_p99_ms": report.percentile(client_ms, 0.99),
            "server_overhead_p50_ms": report.percentile(server, 0.5) - pillow_ms,
            "server_overhead_p99_ms": report.percentile(server, 0.99) - pillow_ms,
            "client_overhead_p50_ms": report.percentile(client_ms, 0.5) - pillow_ms,
            "client_overhead_p99_ms": report.percentile(client_ms, 0.99) - pillow_ms,
            "queue_wait_p50_ms": report.percentile([float(r["wait"]) for r in rows], 0.5),
            "claim_to_done_p50_ms": report.percentile([float(r["work"]) for r in rows], 0.5),
        }

    # -- 3. drain and 4. end to end ------------------------------------------------------------

    async def drain(self) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        async with self.stack.api() as api:
            for rep in range(self.plan.reps):
                for kind, durable in (("bare", False), ("bare, durable write", True)):
                    loop = await asyncio.to_thread(
                        bare_loop,
                        self.files["small"],
                        self.stack.workdir,
                        count=10_000,
                        max_seconds=self.plan.bare_loop_seconds,
                        durable=durable,
                    )
                    runs.append(
                        {"rep": rep, "kind": kind, "rate": loop["rate"], "median_ms": loop["median_ms"]}
                    )
                for workers in (1, 2):
                    runs.append(await self.drain_once(api, workers, rep, self.plan.drain_tasks))
                if self.plan.single_thread_drain_tasks:
                    single = {"WORKER_CONCURRENCY": "1"}
                    for workers in (1, 2):
                        run = await self.drain_once(
                            api, workers, rep, self.plan.single_thread_drain_tasks, single
                        )
                        runs.append({**run, "kind": run["kind"] + ", 1 thread each"})
        return {"tasks": self.plan.drain_tasks, "runs": runs}

    async def drain_once(
        self, api: Api, workers: int, rep: int, tasks: int, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        await self.stack.empty()
        upload = await self.load(api.port, "small", count=tasks, concurrency=16, max_seconds=120)
        accepted = upload["statuses"].get("200", 0)
        if await self.stack.unqueued():
            raise RuntimeError("some uploads were not published at once; the drain would be wrong")
        async with self.stack.workers(workers, env=env) as pids:
            cpu = sum(machine.process_cpu(pid) for pid in pids)
            started = time.time()
            counts = await self.stack.wait_final(accepted, within=300)
            last = await self.stack.db.fetchval(
                "SELECT extract(epoch FROM max(finished_at)) FROM image_tasks"
            )
            cpu = sum(machine.process_cpu(pid) for pid in pids) - cpu
        elapsed = float(last) - started
        return {
            "rep": rep,
            "kind": f"{workers} worker" + ("s" if workers > 1 else ""),
            "workers": workers,
            "tasks": accepted,
            "done": counts.get("done", 0),
            "failed": counts.get("failed", 0),
            "rate": counts.get("done", 0) / elapsed,
            "upload_rate": accepted / upload["elapsed"],
            "worker_cpu_ms_per_image": cpu / max(counts.get("done", 0), 1) * 1000,
        }

    async def end_to_end(self) -> dict[str, Any]:
        runs = []
        async with self.stack.api() as api:
            for rep in range(self.plan.reps):
                await self.stack.empty()
                async with self.stack.workers(2) as pids:
                    before = {"api": machine.process_cpu(api.process.pid), **self.services_cpu()}
                    before["workers"] = sum(machine.process_cpu(pid) for pid in pids)
                    machine_before = self.cpu.snapshot()
                    upload = await self.load(
                        api.port, "small", count=self.plan.e2e_uploads, concurrency=16, max_seconds=120
                    )
                    accepted = upload["statuses"].get("200", 0)
                    counts = await self.stack.wait_final(accepted, within=300)
                    last = await self.stack.db.fetchval(
                        "SELECT extract(epoch FROM max(finished_at)) FROM image_tasks"
                    )
                    after = {"api": machine.process_cpu(api.process.pid), **self.services_cpu()}
                    after["workers"] = sum(machine.process_cpu(pid) for pid in pids)
                    busy = self.cpu.between(machine_before, self.cpu.snapshot())
                elapsed = float(last) - upload["started_wall"]
                done = max(counts.get("done", 0), 1)
                # Where the CPU went, per image, and how much of the machine was busy: is it the limit?
                cpu_ms = {name: (after[name] - before[name]) / done * 1000 for name in before}
                cpu_ms["generator"] = upload["cpu_seconds"] / done * 1000
                errors = (
                    self.plan.e2e_uploads
                    - accepted
                    + counts.get("failed", 0)
                    + (accepted - counts.get("done", 0) - counts.get("failed", 0))
                )
                runs.append(
                    {
                        "rep": rep,
                        "uploads": self.plan.e2e_uploads,
                        "done": counts.get("done", 0),
                        "errors": errors,
                        "rate": counts.get("done", 0) / elapsed,
                        "upload_phase_rate": accepted / upload["elapsed"],
                        "upload_p99_ms": report.percentile(upload["latencies"], 0.99) * 1000,
                        "cpu_ms_per_image": cpu_ms,
                        "machine_busy_share": busy["machine_cpu_seconds"]
                        / (busy["wall_seconds"] * (os.cpu_count() or 1)),
                    }
                )
        return {"runs": runs}

    # -- 5. memory ------------------------------------------------------------------------------

    async def memory(self) -> dict[str, Any]:
        api_runs = []
        for rep in range(self.plan.reps):
            for declared in (True, False):
                await self.stack.empty()
                async with self.stack.api(name="api-memory") as api:
                    api_runs.append(await self.refused_upload(api, declared=declared, rep=rep))
        worker_runs: list[dict[str, Any]] = []
        preset = "not measured in --quick"
        if self.plan.worker_memory_images:
            await self.stack.empty()
            async with self.stack.api() as api:
                preset = await self.thumbnail_preset(api)
                variants: list[tuple[str, dict[str, str]]] = [("default", {})]
                if preset == "available":
                    variants.append(("thumbnail", {"preset": "thumbnail"}))
                for rep in range(self.plan.reps):
                    for image in self.plan.worker_memory_images:
                        for processing, fields in variants:
                            worker_runs.append(await self.worker_peak(api, image, processing, fields, rep))
        return {"api_runs": api_runs, "worker_runs": worker_runs, "thumbnail_preset": preset}

    # -- 6. hostile traffic ---------------------------------------------------------------------

    async def hostile(self) -> dict[str, Any]:
        return await hostile.scenario(self.stack, hostile.HostilePlan(seconds=self.plan.hostile_seconds))

    async def refused_upload(self, api: Api, *, declared: bool, rep: int) -> dict[str, Any]:
        """One 80 MB upload, with a Content-Length (refused before the body) or chunked (refused
        as the streamed body passes MAX_UPLOAD_BYTES), sent while the answer is read."""
        pid = api.process.pid
        async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as client:
            small = self.files["small"].read_bytes()
            for _ in range(5):  # warm: the upload path's code and buffers are in place
                answer = await client.post("/upload", files={"file": ("w.jpg", small, "image/jpeg")})
                answer.raise_for_status()
        baseline = machine.rss_mib(pid)
        machine.reset_peak(pid)
        status = await _send_big_upload(api.port, REFUSED_UPLOAD_BYTES, declared=declared)
        await asyncio.sleep(0.2)
        peak = machine.peak_rss_mib(pid)
        return {
            "rep": rep,
            "upload": "Content-Length" if declared else "chunked",
            "status": status,
            "baseline_mib": baseline,
            "peak_mib": peak,
            "growth_mib": peak - baseline,
        }

    async def thumbnail_preset(self, api: Api) -> str:
        """Whether the API takes `preset=thumbnail`: it must accept that and refuse a made-up one
        (an API that ignores the field accepts both, and then there is no thumbnail to measure)."""
        data = self.files["small"].read_bytes()
        answers = {}
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
            for preset in ("thumbnail", "no-such-preset-bench"):
                answer = await client.post(
                    "/upload", files={"file": ("p.jpg", data, "image/jpeg")}, data={"preset": preset}
                )
                answers[preset] = answer.status_code
        await self.stack.empty()
        if answers["thumbnail"] == 200 and answers["no-such-preset-bench"] != 200:
            return "available"
        return (
            f"not available (preset=thumbnail → {answers['thumbnail']}, "
            f"unknown preset → {answers['no-such-preset-bench']})"
        )

    async def worker_peak(
        self, api: Api, image: str, processing: str, fields: dict[str, str], rep: int
    ) -> dict[str, Any]:
        async with self.stack.workers(1) as (pid,):
            await asyncio.sleep(0.3)
            baseline = machine.rss_mib(pid)
            machine.reset_peak(pid)
            started = time.perf_counter()
            result = await self.load(api.port, image, count=1, concurrency=1, max_seconds=60, fields=fields)
            counts = await self.stack.wait_final(1, within=120, poll=0.02)
            elapsed = time.perf_counter() - started
            peak = machine.peak_rss_mib(pid)
        await self.stack.empty()
        return {
            "rep": rep,
            "image": image,
            "processing": processing,
            "upload_status": next(iter(result["statuses"]), "none"),
            "done": counts.get("done", 0),
            "baseline_mib": baseline,
            "peak_mib": peak,
            "seconds": elapsed,
        }


async def _send_big_upload(port: int, size: int, *, declared: bool) -> int | str:
    """POST a `size`-byte file part, writing and reading at once; returns the answer's status."""
    boundary = "benchboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    framing = f"Content-Length: {len(head) + size + len(tail)}" if declared else "Transfer-Encoding: chunked"
    request_head = (
        f"POST /upload HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: application/json\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(HOST, port)

    def framed(data: bytes) -> bytes:
        return data if declared else f"{len(data):x}\r\n".encode() + data + b"\r\n"

    async def send() -> None:
        with contextlib.suppress(OSError):
            writer.write(request_head + framed(head))
            await writer.drain()
            # A refusal on Content-Length comes at once: let it arrive before the body's first bytes,
            # whose reset would otherwise race the answer.
            await asyncio.sleep(0.05)
            chunk = b"\xff" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                writer.write(framed(chunk))
                await writer.drain()
            writer.write(framed(tail) + (b"" if declared else b"0\r\n\r\n"))
            await writer.drain()

    sending = asyncio.create_task(send())
    try:
        line = await asyncio.wait_for(reader.readline(), 60)
        return int(line.split()[1]) if line else "closed without an answer"
    except OSError as exc:  # the server closed while we were still sending: the reset took the answer
        return f"{type(exc).__name__} before the answer"
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        writer.close()


async def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listened on {port}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.quick(args.reps) if args.quick else Plan.full(args.reps)
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-bench-"))
    started = time.monotonic()
    stack = BenchStack(workdir, uvicorn_args=tuple(args.uvicorn_arg))
    try:
        sizes = {"small": SMALL, "large": LARGE, "24mp": MP24, "50mp": MP50}
        needed = {"small", *plan.ingest_images, *plan.worker_memory_images}
        files: dict[str, Path] = {}
        for name in sorted(needed):
            files[name] = workdir / f"{name}.jpg"
            files[name].write_bytes(await asyncio.to_thread(photo_jpeg, *sizes[name]))
        await stack.start()
        suite = Suite(stack, plan, files)
        results: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "reps": plan.reps,
            "machine": machine.machine(),
            "versions": machine.versions(await stack.postgres_version(), stack.nats_binary),
            "images": {
                name: {"size": f"{sizes[name][0]}×{sizes[name][1]}", "bytes": path.stat().st_size}
                for name, path in files.items()
            },
            "settings": {"uvicorn_args": list(args.uvicorn_arg), **stack.env},
            "scenarios": {},
        }
        for key in ("DATABASE_URL", "NATS_URL", "UPLOADS_DIR", "PROCESSED_DIR"):
            results["settings"].pop(key, None)
        scenarios = {
            "ingest": suite.ingest,
            "queue_overhead": suite.queue_overhead,
            "drain": suite.drain,
            "end_to_end": suite.end_to_end,
            "memory": suite.memory,
        }
        if plan.hostile_seconds:
            scenarios["hostile"] = suite.hostile
        scenarios["side_by_side"] = lambda: sidebyside.on_stack(stack, args.quick, plan.reps)
        for name, scenario in scenarios.items():
            if args.only and name not in args.only:
                continue
            results["scenarios"][name] = await suite.timed(name, scenario)
        results["machine"]["load_average_at_end"] = __import__("os").getloadavg()
        results["elapsed_seconds"] = round(time.monotonic() - started, 1)
        return results
    finally:
        await stack.stop()
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two-minute subset (make bench-quick)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--uvicorn-arg", action="append", default=[], help="extra uvicorn argument")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, files)")
    parser.add_argument("--name", help="results file name (default: the date, plus -quick)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    name = args.name or datetime.date.today().isoformat() + ("-quick" if args.quick else "")
    paths = report.write(results, args.out, name)
    print(report.markdown(results))
    print("written: " + ", ".join(str(path) for path in paths))
    print(f"total: {results['elapsed_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
