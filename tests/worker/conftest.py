from __future__ import annotations

import pytest

from tests.worker.in_process import Worker, started_worker


@pytest.fixture
def worker(stack_env: dict[str, str]) -> Worker:
    """A worker to start in the test (see tests/worker/in_process.py), on the session's stack."""
    return started_worker
