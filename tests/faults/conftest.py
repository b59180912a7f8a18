"""Processes the fault tests start, break and restart themselves: workers and private APIs.

Each factory remembers what it started and stops it (SIGTERM, then SIGKILL) at teardown, whatever
the test did, so a failing test leaves no process behind to disturb the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.stack import start_api, start_worker, stop_process
from tests.faults.processes import Started


@pytest.fixture
def workers(stack_env: dict[str, str], workdir: Path) -> Iterator[Callable[..., Started]]:
    """Start `python -m worker` processes, logging to `<workdir>/<name>.log`, optionally with settings
    of their own (`RENDER_TIMEOUT_SECONDS=...`)."""
    started: list[Started] = []

    def start(name: str, **settings: str) -> Started:
        log_file = workdir / f"{name}.log"
        worker = Started(start_worker({**stack_env, **settings}, log_file=log_file), log_file)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        stop_process(worker.process)


@pytest.fixture
def apis(stack_env: dict[str, str], workdir: Path) -> Iterator[Callable[..., Started]]:
    """Start API processes of the test's own (not the session's shared one) on a given port,
    optionally with settings of their own (`NATS_URL=...`)."""
    started: list[Started] = []

    def start(name: str, port: int, **settings: str) -> Started:
        log_file = workdir / f"{name}.log"
        api = Started(start_api({**stack_env, **settings}, port, log_file=log_file), log_file)
        started.append(api)
        return api

    yield start
    for api in started:
        stop_process(api.process)
