"""schemathesis against the live API and its own OpenAPI document: every check it has, every phase
(examples, coverage, fuzzing and stateful), with API keys off and on. Zero failures.

The API is the real uvicorn process the suite starts (`api_process`), on the suite's PostgreSQL and
NATS; the document is fetched from it, so what is checked is what `/openapi.json` publishes. The
run is bounded (MAX_EXAMPLES per operation and phase) and deterministic (`--generation-deterministic`:
the same requests every run), so a CI failure reproduces with the command it prints.

What the checks may not hold against is in tests/schemathesis.toml, each allowance with its reason;
nothing else is relaxed here. tests/api/test_openapi.py checks what schemathesis cannot (503 on
every route that touches the database, `Allow` on every path, examples that fit their schemas).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from devstack.stack import running_api
from tests.database import session_on

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Per operation and phase: about a minute in all here, for both runs together.
MAX_EXAMPLES = 50
RUN_TIMEOUT_SECONDS = 600
API_KEY = "schemathesis-key-0123456789"

# Every operation the document publishes; one added (or dropped) fails here until it is listed, so
# a route cannot leave the checked contract unnoticed.
OPERATIONS = {
    "POST /upload",
    "POST /uploads",
    "POST /uploads/{upload_id}/complete",
    "GET /status/{task_id}",
    "GET /tasks",
    "GET /tasks/{task_id}",
    "DELETE /tasks/{task_id}",
    "POST /tasks/{task_id}/retry",
    "POST /tasks/{task_id}/cancel",
    "POST /tasks/{task_id}/reprocess",
    "GET /tasks/{task_id}/original",
    "GET /tasks/{task_id}/events",
    "POST /tasks/reprocess",
    "GET /jobs",
    "GET /jobs/{job_id}",
    "POST /jobs/{job_id}/pause",
    "POST /jobs/{job_id}/resume",
    "POST /jobs/{job_id}/cancel",
    "GET /jobs/{job_id}/events",
    "GET /processed/{name}",
    "GET /presets",
    "GET /health",
    "GET /ready",
}


@pytest.fixture(scope="module")
def keyed_api(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    with running_api({**stack_env, "API_KEYS": API_KEY}, log_file=workdir / "fuzz-keyed-api.log") as url:
        yield url


@pytest.fixture(autouse=True)
def no_job_outlives_the_run(stack_env: dict[str, str]) -> Iterator[None]:
    """Schemathesis makes real bulk reprocess jobs (with keys off, over every finished task), which
    the suite's API would go on stepping for the rest of the session, queueing work for the workers
    of later modules: whatever it left running is cancelled."""
    yield
    asyncio.run(_cancel_jobs(stack_env["DATABASE_URL"]))


async def _cancel_jobs(database_url: str) -> None:
    async with session_on(database_url) as session:
        await session.execute(
            text(
                "UPDATE reprocess_jobs SET state = 'cancelled', finished_at = now()"
                " WHERE state IN ('running', 'paused')"
            )
        )
        await session.commit()


def schemathesis(base_url: str, report_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`st run` as a user runs it (the venv's own console script), with every check and phase."""
    command = [
        str(Path(sys.executable).with_name("st")),
        *("--config-file", str(CONFIG)),
        "run",
        f"{base_url}/openapi.json",
        *("--checks", "all"),
        *("--phases", "examples,coverage,fuzzing,stateful"),
        *("--max-examples", str(MAX_EXAMPLES)),
        "--generation-deterministic",
        # One at a time: the machine is small, and the stateful phase runs alone anyway.
        *("--workers", "1"),
        *("--report", "junit", "--report-dir", str(report_dir)),
        "--no-color",
        *extra,
    ]
    # From the report directory, so nothing it might write lands in the repository.
    return subprocess.run(
        command, cwd=report_dir, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False
    )


def test_every_published_operation_is_checked(api_process: str) -> None:
    document = requests.get(f"{api_process}/openapi.json", timeout=10).json()
    published = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    assert published == OPERATIONS


def test_schemathesis_finds_nothing(api_process: str, tmp_path: Path) -> None:
    result = schemathesis(api_process, tmp_path)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
    # Every phase ran (none skipped for want of a schema feature) and every operation was tested.
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in result.stdout, result.stdout[-5000:]
    assert f"Tested: {len(OPERATIONS)}" in result.stdout, result.stdout[-5000:]


def test_schemathesis_finds_nothing_with_api_keys(keyed_api: str, tmp_path: Path) -> None:
    # The key goes on every request (`-H` wins over a generated X-API-Key); without one, or with a
    # wrong one, every task route answers 401, which the coverage phase also tries.
    result = schemathesis(keyed_api, tmp_path, "--header", f"X-API-Key: {API_KEY}")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-3000:]
    assert f"Tested: {len(OPERATIONS)}" in result.stdout, result.stdout[-5000:]
