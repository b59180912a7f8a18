"""`python -m client reprocess` and `jobs`, run as a user runs them, against a real API and worker."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.stack import start_worker, stop_process
from tests import images
from tests.api.test_api_keys import ALICE, keyed_api
from tests.client.test_client import run_client
from tests.waiting import final_status

__all__ = ["keyed_api"]  # the API-key tests' API: Alice's tasks are this module's alone

KEY_ENV = {"IMAGEQUEUE_API_KEY": ALICE["X-API-Key"]}


@pytest.fixture(scope="module")
def worker(stack_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    process = start_worker(stack_env, log_file=workdir / "client-reprocess-worker.log")
    yield process
    stop_process(process)


async def test_reprocess_one_task_and_then_all_of_them_as_a_job(
    keyed_api: str, worker: subprocess.Popen
) -> None:
    async with httpx.AsyncClient(base_url=keyed_api, headers=ALICE, timeout=30) as client:
        ids = []
        for number in range(3):
            posted = await client.post(
                "/upload",
                files={"file": (f"c{number}.jpg", images.jpeg(), "image/jpeg")},
                data={"preset": "thumbnail"},
            )
            ids.append(posted.json()["task_id"])
        for task_id in ids:
            await final_status(client, task_id)

    one = run_client(
        "reprocess",
        str(ids[0]),
        "--ops",
        '[{"op": "grayscale"}]',
        "--wait",
        "--json",
        url=keyed_api,
        env=KEY_ENV,
    )
    assert one.returncode == 0, one.stderr
    status = json.loads(one.stdout)
    assert status["status"] == "done" and "-g1" in status["processed_url"]

    bulk = run_client(
        "reprocess",
        "--where",
        "status=done",
        "--where",
        "preset=thumbnail",
        "--preset",
        "default",
        "--max-in-flight",
        "2",
        "--follow",
        "--json",
        url=keyed_api,
        env=KEY_ENV,
    )
    assert bulk.returncode == 0, bulk.stderr
    job = json.loads(bulk.stdout)
    assert job["state"] == "done" and job["done"] >= 2 and job["failed"] == 0
    assert f"job {job['job_id']}" in bulk.stderr  # progress lines, on stderr

    shown = run_client("jobs", "show", str(job["job_id"]), url=keyed_api, env=KEY_ENV)
    assert shown.returncode == 0 and "done" in shown.stdout
    listed = run_client("jobs", "list", url=keyed_api, env=KEY_ENV)
    assert listed.returncode == 0 and str(job["job_id"]) in listed.stdout
    ended = run_client("jobs", "cancel", str(job["job_id"]), url=keyed_api, env=KEY_ENV)
    assert ended.returncode == 1 and "no longer be paused, resumed or cancelled" in ended.stderr


def test_usage_errors_are_caught_before_anything_is_sent(keyed_api: str) -> None:
    for args in (
        ("reprocess", "--preset", "thumbnail"),
        ("reprocess", "5", "--where", "status=done", "--preset", "thumbnail"),
        ("reprocess", "5", "--ops", "not json"),
        ("reprocess", "--where", "colour=red", "--preset", "thumbnail"),
        ("jobs", "show"),
    ):
        ran = run_client(*args, url=keyed_api, env=KEY_ENV)
        assert ran.returncode == 2, (args, ran.stderr)
