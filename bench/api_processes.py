"""Which of an API's processes answered the uploads (API_PROCESSES > 1), read from outside.

The kernel decides which child takes each connection (a listening socket per child), so who served
what is read, without any debug hook, from the children's own files: the parent's serving children
from /proc, and each one's upload count from the file prometheus-client keeps for it in the folder
its environment names (PROMETHEUS_MULTIPROC_DIR). Used by bench.sidebyside and
tests/api/test_api_processes.py. Linux only (/proc).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector

from api.supervisor import METRICS_DIR_VARIABLE


def serving_children(api_pid: int) -> set[int]:
    """The supervisor's serving children (the spawned servers; not multiprocessing's resource
    tracker); none with one process."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == api_pid and b"spawn_main" in cmdline:
            found.add(int(stat.parent.name))
    return found


def metrics_dir(child: int) -> Path | None:
    """The folder `child` keeps its metric files in, from its environment."""
    for entry in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
        name, _, value = entry.partition(b"=")
        if name.decode() == METRICS_DIR_VARIABLE:
            return Path(value.decode())
    return None


def accepted_by(child: int) -> float:
    """Uploads `child` answered as accepted, from its own metrics file (0 before its first)."""
    folder = metrics_dir(child)
    own = None if folder is None else folder / f"counter_{child}.db"
    if own is None or not own.exists():
        return 0.0
    return sum(
        sample.value
        for metric in MultiProcessCollector.merge([str(own)])
        for sample in metric.samples
        if sample.name == "imagequeue_uploads_total" and sample.labels.get("outcome") == "accepted"
    )


def accepted_per_process(api_pid: int) -> dict[int, float]:
    """Uploads each serving child of `api_pid` has answered as accepted so far (empty with one
    process: no children)."""
    counts = {}
    for child in serving_children(api_pid):
        try:
            counts[child] = accepted_by(child)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile
    return counts
