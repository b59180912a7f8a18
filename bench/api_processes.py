"""Which of an API's processes answered the uploads (API_PROCESSES > 1), read from outside.

The supervisor's children share one listening socket, and the kernel (with each child's event loop
accepting until the queue is empty) decides who takes each connection: a burst of kept-alive
connections can all land on one child. Each child's own upload count is in the file
prometheus-client keeps for it, in the folder its environment names (PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

from pathlib import Path

import psutil
from prometheus_client.multiprocess import MultiProcessCollector

from api.supervisor import METRICS_DIR_VARIABLE


def accepted_per_process(api_pid: int) -> dict[int, float]:
    """Uploads each serving child of `api_pid` has answered as accepted so far (empty with one
    process: no children)."""
    counts = {}
    for child in psutil.Process(api_pid).children():
        try:
            serving = any("spawn_main" in part for part in child.cmdline())  # not the resource tracker
            folder = child.environ().get(METRICS_DIR_VARIABLE)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not serving or folder is None:
            continue
        own = Path(folder) / f"counter_{child.pid}.db"
        counts[child.pid] = 0.0
        if own.exists():
            counts[child.pid] = sum(
                sample.value
                for metric in MultiProcessCollector.merge([str(own)])
                for sample in metric.samples
                if sample.name == "imagequeue_uploads_total" and sample.labels.get("outcome") == "accepted"
            )
    return counts
