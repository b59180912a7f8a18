"""Hostile traffic (issue 14): normal uploads while every attack class runs at once, beside the same
normal load alone.

    .venv/bin/python -m bench.hostile [--seconds 60] [--rate 20] [--workers 1] [--mix '{"idle": 500}']

Starts throwaway PostgreSQL and NATS, one API process (`python -m api.serve`, as `make run` and
Dockerfile.api start it, HTTP_* limits at their defaults) and `--workers` worker processes, all on
127.0.0.1. Two phases of `--seconds` each:

1. baseline: `--rate` uploads a second of a 0.27 MP photo-like JPEG through an httpx client, each
   followed to `done` (GET /status every 50 ms), while `/health` is asked every 100 ms on a new
   connection;
2. hostile: the same, while bench/hostile_attacks.py (a process of its own) runs slowloris heads,
   bodies at a byte a second, 64 MB heads, 20,000-header heads, a flood of idle connections past
   the connection cap, and cost-bomb uploads.

Reports, for each phase: the normal uploads' answers (5xx counted apart), upload and upload → done
latency (p50/p99/max, from the client and from the task's own timestamps), `/health`'s answer time,
the API's and the workers' RSS (start, peak, end; workers with any child processes) and CPU, the
upload folder's temporary files and the API's open files at their peak, and the machine's other
load; then how each attack was answered. Prints Markdown and writes
`bench/results/<date>-hostile.json` and `.md`. Every load is bounded in time and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from api.serve import LIMIT_SETTINGS
from bench import machine
from bench.hostile_attacks import Mix
from bench.images import photo_jpeg
from bench.report import percentile
from bench.stack import Api, BenchStack
from config import get_settings
from core.storage import TEMP_PREFIX

SMALL = (600, 450)
STATUS_POLL_SECONDS = 0.05
HEALTH_POLL_SECONDS = 0.1
SAMPLE_SECONDS = 0.25
# How long a normal upload is followed after its answer before it counts as not done.
FOLLOW_SECONDS = 120.0
# Past this many normal uploads in flight the rate is not kept (the API is not keeping up): counted.
MAX_IN_FLIGHT = 400
WARM_UP_UPLOADS = 20
# After the attacks end: how long the processes' RSS is watched for whether it comes back down.
SETTLE_SECONDS = 10.0


@dataclass
class NormalLoad:
    """The normal uploads of one phase, each followed to a final status."""

    upload_seconds: list[float] = field(default_factory=list)
    done_seconds: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    final: collections.Counter[str] = field(default_factory=collections.Counter)
    status_poll_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    task_ids: list[int] = field(default_factory=list)
    skipped: int = 0  # not sent: MAX_IN_FLIGHT were unanswered

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport_errors.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))


async def normal_uploads(base_url: str, data: bytes, rate: float, seconds: float) -> NormalLoad:
    """`rate` uploads a second for `seconds` (open loop: a slow answer does not slow the pace), each
    followed to `done` or `failed`."""
    load = NormalLoad()
    # uvicorn closes a connection idle for its keep-alive timeout; expiring ours sooner avoids
    # sending on a connection at the moment the server closes it (bench/soak.py).
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        in_flight: set[asyncio.Task] = set()

        async def one(index: int) -> None:
            started = time.perf_counter()
            try:
                answer = await client.post(
                    "/upload", files={"file": (f"normal-{index}.jpg", data, "image/jpeg")}
                )
            except httpx.TransportError as exc:
                load.transport_errors[type(exc).__name__] += 1
                return
            load.upload_seconds.append(time.perf_counter() - started)
            load.statuses[str(answer.status_code)] += 1
            if answer.status_code != 200:
                return
            task_id = answer.json()["task_id"]
            load.task_ids.append(task_id)
            deadline = time.monotonic() + FOLLOW_SECONDS
            while time.monotonic() < deadline:
                try:
                    status = await client.get(f"/status/{task_id}")
                except httpx.TransportError as exc:
                    load.status_poll_errors[type(exc).__name__] += 1
                else:
                    if status.status_code != 200:
                        load.status_poll_errors[str(status.status_code)] += 1
                    elif status.json()["status"] in ("done", "failed"):
                        load.final[status.json()["status"]] += 1
                        load.done_seconds.append(time.perf_counter() - started)
                        return
                await asyncio.sleep(STATUS_POLL_SECONDS)
            load.final[f"not final within {FOLLOW_SECONDS:g} s"] += 1

        end = time.monotonic() + seconds
        next_at = time.monotonic()
        index = 0
        while next_at < end:
            if len(in_flight) < MAX_IN_FLIGHT:
                task = asyncio.create_task(one(index))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            else:
                load.skipped += 1
            index += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if in_flight:
            await asyncio.wait(in_flight)
    return load


@dataclass
class Health:
    seconds: list[float] = field(default_factory=list)
    answers: collections.Counter[str] = field(default_factory=collections.Counter)


async def poll_health(base_url: str, stop: asyncio.Event) -> Health:
    """GET /health every 100 ms on a new connection each time (as a load balancer's check does),
    one after another: a slow answer delays the next poll and shows as its own time."""
    health = Health()
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                answer = await client.get("/health")
                health.answers[str(answer.status_code)] += 1
            except httpx.TransportError as exc:
                health.answers[type(exc).__name__] += 1
            health.seconds.append(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEALTH_POLL_SECONDS)
    return health


def _tree_rss_mib(process: psutil.Process) -> float:
    """RSS of `process` and its children (a worker's render processes, if it has any)."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 2**20


@dataclass
class Watched:
    """RSS and open files of the API and the workers, sampled every SAMPLE_SECONDS."""

    rss: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    api_open_files: list[int] = field(default_factory=list)
    temp_files: list[int] = field(default_factory=list)
    accept_queue: list[int] = field(default_factory=list)


def accept_queue(port: int) -> int | None:
    """Connections the kernel has completed for the listening socket on `port` that the API has not
    accepted yet (a LISTEN socket's rx_queue in /proc/net/tcp): time spent there is not the API's
    own, and no limit of it can see it."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                return int(fields[4].split(":")[1], 16)
    return None


def _temp_files(uploads: Path) -> int:
    return sum(1 for _ in uploads.glob(f"{TEMP_PREFIX}*"))


async def watch(processes: dict[str, int], uploads: Path, port: int, stop: asyncio.Event) -> Watched:
    watched = Watched()
    handles = {name: psutil.Process(pid) for name, pid in processes.items()}
    while not stop.is_set():
        for name, process in handles.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                watched.rss[name].append(_tree_rss_mib(process))
        with contextlib.suppress(psutil.NoSuchProcess):
            watched.api_open_files.append(handles["api"].num_fds())
        watched.temp_files.append(await asyncio.to_thread(_temp_files, uploads))
        queued = await asyncio.to_thread(accept_queue, port)
        if queued is not None:
            watched.accept_queue.append(queued)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)
    return watched


def _spread(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    return {
        "p50": percentile(values, 0.50) * scale,
        "p95": percentile(values, 0.95) * scale,
        "p99": percentile(values, 0.99) * scale,
        "max": max(values) * scale,
        "n": len(values),
    }


@dataclass(frozen=True)
class HostilePlan:
    seconds: float = 60.0  # each phase
    rate: float = 20.0  # normal uploads a second
    workers: int = 1
    mix: Mix = field(default_factory=Mix)


class Bench:
    def __init__(self, stack: BenchStack, api: Api, workers: list[int], plan: HostilePlan) -> None:
        self.stack = stack
        self.api = api
        self.workers = workers
        self.plan = plan
        self.data = photo_jpeg(*SMALL)
        self.cpu = machine.CpuAccount(stack.postmaster_pid())

    @property
    def processes(self) -> dict[str, int]:
        return {"api": self.api.process.pid, **{f"worker {i + 1}": pid for i, pid in enumerate(self.workers)}}

    def cpu_seconds(self) -> dict[str, float]:
        own = psutil.Process().cpu_times()
        return {
            **{name: machine.tree_cpu(pid) for name, pid in self.processes.items()},
            "measuring client": own.user + own.system,
        }

    async def phase(self, name: str, *, hostile: bool) -> dict[str, Any]:
        print(f"  {name}: {self.plan.seconds:g} s", flush=True)
        stop = asyncio.Event()
        rss_before = {name: _tree_rss_mib(psutil.Process(pid)) for name, pid in self.processes.items()}
        cpu_before, machine_before = self.cpu_seconds(), self.cpu.snapshot()
        watching = asyncio.create_task(watch(self.processes, self.stack.uploads, self.api.port, stop))
        health = asyncio.create_task(poll_health(self.api.base_url, stop))
        attacker = await self.start_attacker() if hostile else None
        started = time.monotonic()
        load = await normal_uploads(self.api.base_url, self.data, self.plan.rate, self.plan.seconds)
        attack = await self.attack_result(attacker) if attacker else None
        window = time.monotonic() - started
        stop.set()
        watched, polled = await watching, await health
        cpu_after, machine_after = self.cpu_seconds(), self.cpu.snapshot()
        busy = machine.CpuAccount.between(machine_before, machine_after)
        result: dict[str, Any] = {
            "seconds": round(window, 1),
            "normal": await self.normal_figures(load),
            "health": {**_spread(polled.seconds), "answers": dict(polled.answers)},
            "processes": {
                process: {
                    "rss_start_mib": rss_before[process],
                    "rss_peak_mib": max(watched.rss[process], default=float("nan")),
                    "rss_end_mib": watched.rss[process][-1] if watched.rss[process] else float("nan"),
                    "cpu_seconds": cpu_after[process] - cpu_before[process],
                    "cpu_share_of_a_core": (cpu_after[process] - cpu_before[process]) / window,
                }
                for process in self.processes
            },
            "api_open_files_peak": max(watched.api_open_files, default=0),
            "temp_files_peak": max(watched.temp_files, default=0),
            "accept_queue": _spread(watched.accept_queue, scale=1.0),
            "cpu": busy,
            "client_cpu_seconds": cpu_after["measuring client"] - cpu_before["measuring client"],
            "alive": {process: psutil.pid_exists(pid) for process, pid in self.processes.items()},
        }
        if attack is not None:
            result["attack"] = attack
            result["cost_bomb_tasks"] = await self.cost_bomb_tasks(attack)
        print(
            f"  {result['normal']['sent']} normal uploads, other load {busy['other_cpu_share']:.0%}",
            flush=True,
        )
        return result

    async def start_attacker(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bench.hostile_attacks", "--port", str(self.api.port)),
            *("--seconds", str(self.plan.seconds), "--mix", json.dumps(asdict(self.plan.mix))),
            *("--header-timeout", str(get_settings().http_header_timeout_seconds)),
            stdout=asyncio.subprocess.PIPE,
        )

    async def attack_result(self, attacker: asyncio.subprocess.Process) -> dict[str, Any]:
        output, _ = await attacker.communicate()
        if attacker.returncode != 0:
            raise RuntimeError(f"the attacker failed with code {attacker.returncode}")
        return json.loads(output)

    async def normal_figures(self, load: NormalLoad) -> dict[str, Any]:
        """The client's figures, and upload_time → finished_at from the tasks' own rows."""
        rows = await self.stack.db.fetch(
            "SELECT status, extract(epoch FROM finished_at - upload_time) AS total"
            " FROM image_tasks WHERE id = ANY($1::int[])",
            load.task_ids,
        )
        server = [float(row["total"]) for row in rows if row["total"] is not None]
        return {
            "sent": load.sent,
            "skipped": load.skipped,
            "statuses": dict(load.statuses),
            "server_errors": load.server_errors,
            "transport_errors": dict(load.transport_errors),
            "status_poll_errors": dict(load.status_poll_errors),
            "final": dict(load.final),
            "upload_ms": _spread(load.upload_seconds),
            "done_ms": _spread(load.done_seconds),
            "task_done_ms": _spread(server),
        }

    async def cost_bomb_tasks(self, attack: dict[str, Any]) -> dict[str, Any]:
        """What became of the cost bombs the API accepted (their rows, once final or at the end)."""
        found = {}
        for kind, bomb in attack["cost_bombs"].items():
            if not bomb["task_ids"]:
                continue
            rows = await self.stack.db.fetch(
                "SELECT status, attempts, error, extract(epoch FROM finished_at - started_at) AS render"
                " FROM image_tasks WHERE id = ANY($1::int[])",
                bomb["task_ids"],
            )
            renders = [float(row["render"]) for row in rows if row["render"] is not None]
            found[kind] = {
                "statuses": dict(collections.Counter(row["status"] for row in rows)),
                "attempts_max": max((row["attempts"] for row in rows), default=0),
                "errors": dict(collections.Counter(row["error"] for row in rows if row["error"])),
                "render_seconds": _spread(renders, scale=1.0),
            }
        return found

    async def settle(self) -> dict[str, Any]:
        """The processes' RSS SETTLE_SECONDS after the attacks: does it come back down?"""
        await asyncio.sleep(SETTLE_SECONDS)  # the time being measured, not a wait for a state
        return {name: _tree_rss_mib(psutil.Process(pid)) for name, pid in self.processes.items()}

    async def wait_idle(self, within: float = 120.0) -> None:
        """Every task final: the next phase starts with an empty queue."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            counts = await self.stack.counts()
            if sum(n for status, n in counts.items() if status not in ("done", "failed")) == 0:
                return
            await asyncio.sleep(0.2)


async def scenario(stack: BenchStack, plan: HostilePlan) -> dict[str, Any]:
    """Both phases on `stack` (started), with an API and workers of their own."""
    started = time.monotonic()
    result: dict[str, Any] = {"plan": asdict(plan), "settings": _shown_settings(stack.env)}
    async with stack.api(name="api-hostile") as api, stack.workers(plan.workers) as pids:
        bench = Bench(stack, api, pids, plan)
        await normal_uploads(api.base_url, bench.data, WARM_UP_UPLOADS, 1.0)
        await bench.wait_idle()
        result["baseline"] = await bench.phase("baseline (normal uploads alone)", hostile=False)
        await bench.wait_idle()
        result["hostile"] = await bench.phase("hostile (the same, with every attack at once)", hostile=True)
        result["rss_after_settle_mib"] = await bench.settle()
        result["api_log_tail"] = _tail(stack.workdir / "api-hostile.log")
        result["workers_log_tail"] = _tail(stack.workdir / "workers.log")
    result["elapsed_seconds"] = round(time.monotonic() - started, 1)
    return result


async def run(plan: HostilePlan, *, keep: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="imagequeue-hostile-"))
    stack = BenchStack(workdir)
    try:
        await stack.start()
        print("— hostile traffic", flush=True)
        results: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine.machine(),
            "versions": machine.versions(await stack.postgres_version(), stack.nats_binary),
            **await scenario(stack, plan),
        }
        results["machine"]["load_average_at_end"] = os.getloadavg()
        return results
    finally:
        await stack.stop()
        if keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _shown_settings(env: dict[str, str]) -> dict[str, Any]:
    settings = get_settings()
    shown: dict[str, Any] = {
        name: getattr(settings, name.lower())
        for name in (
            *LIMIT_SETTINGS,
            "MAX_UPLOAD_BYTES",
            "MAX_OUTPUT_PIXELS",
            "WORKER_CONCURRENCY",
        )
    }
    shown.update(
        {
            k: v
            for k, v in env.items()
            if k not in ("DATABASE_URL", "NATS_URL", "UPLOADS_DIR", "PROCESSED_DIR")
        }
    )
    return shown


def _tail(path: Path, lines: int = 15) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").splitlines()[-lines:]
    return []


# --- the report ------------------------------------------------------------------------------------


def _ms(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{key}: {n:,}" for key, n in counter.items()) or "none"


def _queue(phase: dict[str, Any]) -> str:
    queued = phase.get("accept_queue") or {}
    if not queued.get("n"):
        return "not read"
    return f"{queued['p50']:,.0f} / {queued['max']:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """A standalone run: when, where, then the tables."""
    machine_load = results["machine"]
    return (
        f"Run of {results['date']}; load average at start {machine_load['load_average_at_start'][0]:.2f}, "
        f"at end {machine_load['load_average_at_end'][0]:.2f}.\n\n{section(results)}"
    )


def section(results: dict[str, Any]) -> str:
    """The tables of one scenario's result (also `make bench`'s section 6)."""
    plan = results["plan"]
    base, hostile = results["baseline"], results["hostile"]
    out = [
        f"{plan['seconds']:g} s a phase, {plan['rate']:g} normal uploads/s (600×450 JPEG), "
        f"{plan['workers']} worker process(es); {results['elapsed_seconds']} s in all.",
        "",
        "**Normal uploads** (ms; client: POST answered, and POST → `done` seen with GET /status every "
        "50 ms; task: `upload_time` → `finished_at` from the row)",
        "",
    ]
    rows = []
    for label, key in (
        ("upload", "upload_ms"),
        ("upload → done (client)", "done_ms"),
        ("upload → done (task)", "task_done_ms"),
    ):
        for phase_name, phase in (("baseline", base), ("hostile", hostile)):
            figures = phase["normal"][key]
            rows.append(
                [
                    label,
                    phase_name,
                    f"{figures['n']:,}",
                    _ms(figures["p50"]),
                    _ms(figures["p95"]),
                    _ms(figures["p99"]),
                    _ms(figures["max"]),
                ]
            )
    out.append(_table(["figure", "phase", "n", "p50", "p95", "p99", "max"], rows))
    out += [
        "",
        _table(
            ["phase", "sent", "answers", "5xx", "transport errors", "final", "not sent (400 in flight)"],
            [
                [
                    name,
                    f"{phase['normal']['sent']:,}",
                    _counts(phase["normal"]["statuses"]),
                    f"**{phase['normal']['server_errors']}**",
                    _counts(phase["normal"]["transport_errors"]),
                    _counts(phase["normal"]["final"]),
                    f"{phase['normal']['skipped']}",
                ]
                for name, phase in (("baseline", base), ("hostile", hostile))
            ],
        ),
    ]
    out += ["", "**`/health`** (a new connection each time, every 100 ms; ms)", ""]
    out.append(
        _table(
            ["phase", "polls", "answers", "p50", "p99", "max"],
            [
                [
                    name,
                    f"{phase['health']['n']:,}",
                    _counts(phase["health"]["answers"]),
                    _ms(phase["health"]["p50"]),
                    _ms(phase["health"]["p99"]),
                    _ms(phase["health"]["max"]),
                ]
                for name, phase in (("baseline", base), ("hostile", hostile))
            ],
        )
    )
    out += ["", "**Processes** (RSS in MiB, a worker with any children; CPU share of one core)", ""]
    rows = []
    settled = results.get("rss_after_settle_mib", {})
    for process in base["processes"]:
        for name, phase in (("baseline", base), ("hostile", hostile)):
            figures = phase["processes"][process]
            rows.append(
                [
                    process,
                    name,
                    _ms(figures["rss_start_mib"]),
                    _ms(figures["rss_peak_mib"]),
                    _ms(figures["rss_end_mib"]),
                    _ms(settled.get(process)) if name == "hostile" else "",
                    f"{figures['cpu_share_of_a_core']:.0%}",
                ]
            )
    attack = hostile.get("attack", {})
    out.append(
        _table(
            ["process", "phase", "RSS start", "RSS peak", "RSS end", f"{SETTLE_SECONDS:g} s after", "CPU"],
            rows,
        )
    )
    out += [
        "",
        f"API open files at peak: {base['api_open_files_peak']:,} (baseline), "
        f"{hostile['api_open_files_peak']:,} (hostile); upload temp files at peak: "
        f"{base['temp_files_peak']}, {hostile['temp_files_peak']}. Connections waiting in the "
        f"kernel for the API to accept them (sampled every {SAMPLE_SECONDS:g} s), p50 / max: "
        f"{_queue(base)}, {_queue(hostile)}. "
        f"CPU of the measuring client (normal uploads, /health, sampling): "
        f"{base['client_cpu_seconds']:.1f} s, {hostile['client_cpu_seconds']:.1f} s; of the attacker "
        f"process: {attack.get('cpu_seconds', 0):.1f} s; of the whole machine: "
        f"{base['cpu']['machine_cpu_seconds']:.0f} s, {hostile['cpu']['machine_cpu_seconds']:.0f} s in "
        f"{base['cpu']['wall_seconds']:.0f} s, {hostile['cpu']['wall_seconds']:.0f} s. Share of the "
        f"machine's CPU used by processes this run did not start: "
        f"{base['cpu']['other_cpu_share']:.0%} (baseline), "
        f"{hostile['cpu']['other_cpu_share']:.0%} (hostile). Still running at the end: "
        f"{_counts({k: int(v) for k, v in hostile['alive'].items()})}.",
        "",
        "**Attacks: how each connection was answered** (held: connect → closed by the server)",
        "",
    ]
    mix = plan["mix"]
    described = {
        "slowloris": f"{mix['slowloris']} connections, a header byte every {mix['slowloris_interval']:g} s",
        "slow bodies": f"{mix['slow_bodies']} uploads (Content-Length 500,000), a body byte every "
        f"{mix['slow_body_interval']:g} s",
        "64 MB heads": f"{mix['header_bombs']} at a time, each up to 64 MB of one header",
        "20,000 headers": f"{mix['header_floods']} at a time",
        "idle": f"{mix['idle']} connections sending nothing",
    }
    out.append(
        _table(
            [
                "attack",
                "load",
                "connections",
                "answered",
                "held p50 s",
                "held max s",
                "sent before close, max",
            ],
            [
                [
                    name,
                    described[name],
                    f"{figures['opened']:,} ({figures['opened'] / plan['seconds']:,.0f}/s)",
                    _counts(figures["outcomes"]),
                    _ms(figures["held_p50_seconds"]),
                    _ms(figures["held_max_seconds"]),
                    ""
                    if figures["sent_bytes_max"] is None
                    else f"{figures['sent_bytes_max'] / 2**20:,.1f} MiB",
                ]
                for name, figures in attack.get("connections", {}).items()
            ],
        )
    )
    out += ["", f"**Cost bombs** ({mix['cost_bombs_per_second']:g} uploads/s in all, the kinds in turn)", ""]
    tasks = hostile.get("cost_bomb_tasks", {})
    rows = []
    for name, bomb in attack.get("cost_bombs", {}).items():
        detail = "; ".join(
            f"{status}: {text[:140]}" for status, text in bomb["sample"].items() if status != "200"
        )
        accepted = tasks.get(name)
        if accepted:
            render = accepted["render_seconds"]
            detail = (
                f"tasks {_counts(accepted['statuses'])}, render p50 {_ms(render['p50'], 2)} s, "
                f"max {_ms(render['max'], 2)} s" + (f"; {detail}" if detail else "")
            )
        rows.append(
            [
                name,
                f"{bomb['upload_bytes']:,}",
                f"{bomb['sent']:,}",
                _counts(bomb["answers"]),
                _ms(None if bomb["answer_p50_seconds"] is None else bomb["answer_p50_seconds"] * 1000),
                _ms(None if bomb["answer_max_seconds"] is None else bomb["answer_max_seconds"] * 1000),
                detail.replace("|", "\\|").replace("\n", " "),
            ]
        )
    out.append(
        _table(
            ["cost bomb", "bytes", "sent", "answers", "answer p50 ms", "max ms", "what became of it"], rows
        )
    )
    return "\n".join(out)


def write(results: dict[str, Any], folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.json", folder / f"{name}.md"]
    paths[0].write_text(json.dumps(results, indent=1, default=str))
    paths[1].write_text(f"# Hostile traffic\n\n{markdown(results)}\n")
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=20.0, help="normal uploads a second")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--mix", type=json.loads, default={}, help="JSON object of Mix fields to change")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", help="results file name (default: <date>-hostile)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, files)")
    args = parser.parse_args()
    # An unknown field fails here, before any server starts.
    plan = HostilePlan(seconds=args.seconds, rate=args.rate, workers=args.workers, mix=Mix(**args.mix))
    results = asyncio.run(run(plan, keep=args.keep))
    name = args.name or datetime.date.today().isoformat() + "-hostile"
    paths = write(results, args.out, name)
    print(markdown(results))
    print("written: " + ", ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
