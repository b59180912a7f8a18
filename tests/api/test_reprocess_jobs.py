"""Bulk reprocess jobs: POST /tasks/reprocess over ~30 tasks, throttled, paused and resumed across an
API killed and started again, cancelled, followed over SSE, and refused when it should be."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from api.routes.jobs import JOB_NOT_FOUND
from core import jobs
from core.models import ImageTask, ReprocessJobTask
from devstack.servers import free_port
from devstack.stack import start_api, start_worker, stop_process, wait_until_ready
from tests import images
from tests.sse import EventReader
from tests.waiting import eventually, final_status

CAROL = {"X-API-Key": "carol-key-0123456789"}
DAVE = {"X-API-Key": "dave-key-0123456789ab"}
TASKS = 30
MAX_IN_FLIGHT = 3
# The job limit sits at the batch's size: one task more (the probe below) is over it.
MAX_TASKS = TASKS


class Api:
    """An API process of this module's own, so the test can kill it and start another."""

    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        self._env = env
        self._log_file = log_file
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        port = free_port()
        self.process = start_api(self._env, port, log_file=self._log_file)
        self.url = f"http://127.0.0.1:{port}"
        wait_until_ready(self.url, timeout=60, process=self.process)
        return self.url

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture(scope="module")
def job_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {
        **stack_env,
        "API_KEYS": f"{CAROL['X-API-Key']},{DAVE['X-API-Key']}",
        "REPROCESS_INTERVAL_SECONDS": "0.2",
        "REPROCESS_JOB_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "REPROCESS_JOB_MAX_TASKS": str(MAX_TASKS),
    }


@pytest.fixture(scope="module")
def api(job_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    started = Api(job_env, workdir / "jobs-api.log")
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def worker(job_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    process = start_worker(job_env, log_file=workdir / "jobs-worker.log")
    yield process
    stop_process(process)


@pytest.fixture(scope="module")
def batch(api: Api, worker: subprocess.Popen) -> list[int]:
    """Carol's 30 thumbnails, done."""
    return asyncio.run(_upload_batch(api.url))


async def _upload_batch(url: str) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=CAROL) as client:
        ids = []
        for number in range(TASKS):
            posted = await client.post(
                "/upload",
                files={"file": (f"b{number}.jpg", images.jpeg(200, 150), "image/jpeg")},
                data={"preset": "thumbnail"},
            )
            assert posted.status_code == 200, posted.text
            ids.append(posted.json()["task_id"])
        for task_id in ids:
            assert (await final_status(client, task_id))["status"] == "done"
    return ids


@contextlib.asynccontextmanager
async def _client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=CAROL) as client:
        yield client


async def _job(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    answer = await client.get(f"/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _job_when(
    client: httpx.AsyncClient, job_id: int, condition: Any, what: str, timeout: float = 60
) -> dict:
    seen: dict[str, Any] = {}

    async def holds() -> bool:
        nonlocal seen
        try:
            seen = await _job(client, job_id)
        except httpx.TransportError:
            return False
        return bool(condition(seen))

    await eventually(holds, timeout=timeout, what=lambda: f"job {job_id} {what}: {seen}")
    return seen


async def _in_flight_in_database(db: AsyncSession, job_id: int) -> int:
    """The job's tasks not finished now, by the task rows themselves (not the job's own count)."""
    db.expire_all()
    count = await db.scalar(
        select(func.count())
        .select_from(ReprocessJobTask)
        .join(ImageTask, ImageTask.id == ReprocessJobTask.task_id)
        .where(ReprocessJobTask.job_id == job_id, ImageTask.status.in_(("pending", "processing")))
    )
    return count or 0


async def test_a_job_is_throttled_paused_survives_an_api_restart_and_finishes(
    api: Api, batch: list[int], db: AsyncSession
) -> None:
    async with _client(api) as client:
        made = await client.post(
            "/tasks/reprocess", json={"where": {"status": "done", "preset": "thumbnail"}, "preset": "default"}
        )
        assert made.status_code == 202, made.text
        job = made.json()
        job_id = job["job_id"]
        assert job["matched"] == TASKS and job["max_in_flight"] == MAX_IN_FLIGHT

        # Throttled: never more than MAX_IN_FLIGHT of its tasks unfinished at once.
        async def some_queued() -> bool:
            assert await _in_flight_in_database(db, job_id) <= MAX_IN_FLIGHT
            return (await _job(client, job_id))["queued"] >= 2 * MAX_IN_FLIGHT

        await eventually(some_queued, timeout=60, what="the job under way")
        paused = await client.post(f"/jobs/{job_id}/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
        settled = await _job_when(client, job_id, lambda job: job["in_flight"] == 0, "drained while paused")
        assert settled["queued"] < TASKS

    # The API that made the job dies; another one, started afresh, carries it on.
    api.kill()
    api.start()
    async with _client(api) as client:
        # Passes of the new API's loop go by (a single reprocess's old file removed), and still
        # nothing more of the paused job is queued.
        probe = await client.post(
            "/upload", files={"file": ("probe.jpg", images.jpeg(), "image/jpeg")}, data={"preset": "default"}
        )
        probe_id = probe.json()["task_id"]
        await final_status(client, probe_id)
        assert (
            await client.post(f"/tasks/{probe_id}/reprocess", json={"preset": "thumbnail"})
        ).status_code == 202
        await final_status(client, probe_id)

        async def probe_tidied() -> bool:
            cleared = await db.scalar(
                text("SELECT superseded_outputs IS NULL FROM image_tasks WHERE id = :id"), {"id": probe_id}
            )
            return cleared is True

        await eventually(probe_tidied, timeout=30, what="the probe's old output removed")
        assert (await _job(client, job_id))["queued"] == settled["queued"]

        async with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            reader = EventReader(stream)
            first = await reader.next()
            assert first is not None and first.event == "progress" and first.json()["state"] == "paused"
            resumed = await client.post(f"/jobs/{job_id}/resume")
            assert resumed.status_code == 200 and resumed.json()["state"] == "running"
            seen = [first.json()]
            while (event := await reader.next(timeout=90)) is not None:
                seen.append(event.json())
        # The stream followed the job to its end, within its throttle, and then closed.
        assert seen[-1]["state"] == "done"
        assert all(event["in_flight"] <= MAX_IN_FLIGHT for event in seen)
        assert len({event["queued"] for event in seen}) > 2
        last = seen[-1]
        assert (last["matched"], last["queued"], last["done"], last["failed"], last["skipped"]) == (
            TASKS,
            TASKS,
            TASKS,
            0,
            0,
        )
        for task_id in batch:
            status = (await client.get(f"/tasks/{task_id}")).json()
            assert status["status"] == "done"
            assert "-g1" in status["processed_url"]
            assert status["processing"][0]["preset"] == "default"

        # A finished job can no longer be steered.
        for action in ("pause", "resume", "cancel"):
            refused = await client.post(f"/jobs/{job_id}/{action}")
            assert refused.status_code == 409
            assert refused.json()["detail"] == jobs.JOB_FINISHED.format(state="done")


async def test_a_cancelled_job_queues_nothing_more(api: Api, batch: list[int], db: AsyncSession) -> None:
    async with _client(api) as client:
        made = await client.post(
            "/tasks/reprocess",
            json={"where": {"preset": "default"}, "ops": [{"op": "grayscale"}], "max_in_flight": 1},
        )
        assert made.status_code == 202, made.text
        job_id = made.json()["job_id"]
        assert made.json()["max_in_flight"] == 1
        await _job_when(client, job_id, lambda job: job["queued"] >= 1, "under way")
        cancelled = await client.post(f"/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert (await client.post(f"/jobs/{job_id}/cancel")).status_code == 200  # repeating is harmless
        assert (await client.post(f"/jobs/{job_id}/resume")).status_code == 409
        end = await _job_when(client, job_id, lambda job: job["in_flight"] == 0, "in-flight tasks finished")
        assert end["queued"] < end["matched"]
        assert end["finished_at"] is not None
        # The tasks it never reached are as they were.
        db.expire_all()
        untouched = await db.scalar(
            select(func.count())
            .select_from(ReprocessJobTask)
            .where(ReprocessJobTask.job_id == job_id, ReprocessJobTask.state == "waiting")
        )
        assert untouched == end["matched"] - end["queued"]


async def test_refusals(api: Api, batch: list[int]) -> None:
    async with _client(api) as client:
        too_many = await client.post("/tasks/reprocess", json={"preset": "thumbnail"})
        assert too_many.status_code == 422
        assert "REPROCESS_JOB_MAX_TASKS" in too_many.json()["detail"]
        not_final = await client.post(
            "/tasks/reprocess", json={"where": {"status": "pending"}, "preset": "thumbnail"}
        )
        assert not_final.status_code == 422
        for body in ({"where": {"preset": "thumbnail"}}, {"where": {"colour": "red"}, "preset": "thumbnail"}):
            bad = await client.post("/tasks/reprocess", json=body)
            assert bad.status_code == 422, bad.text
        for path in ("/jobs/0", "/jobs/2147483648", "/jobs/99999999"):
            missing = await client.get(path)
            assert missing.status_code == 404 and missing.json()["detail"] == JOB_NOT_FOUND
        empty = await client.post(
            "/tasks/reprocess",
            json={"where": {"uploaded_before": "2000-01-01T00:00:00Z"}, "preset": "thumbnail"},
        )
        assert empty.status_code == 202 and empty.json()["state"] == "done" and empty.json()["matched"] == 0
        job_id = empty.json()["job_id"]
        other = await client.get(f"/jobs/{job_id}", headers=DAVE)
        assert other.status_code == 404
        assert (await client.post(f"/jobs/{job_id}/pause", headers=DAVE)).status_code == 404
        assert (await client.get(f"/jobs/{job_id}", headers={"X-API-Key": ""})).status_code == 401
        listed = (await client.get("/jobs")).json()["items"]
        assert job_id in [job["job_id"] for job in listed]
        assert (await client.get("/jobs", headers=DAVE)).json()["items"] == []


async def test_an_upload_during_a_job_does_not_wait_for_the_job(api: Api, batch: list[int]) -> None:
    # The throttle's point: with one of the job's tasks in the queue at a time, an interactive
    # upload waits behind at most that one, not behind the 30 still to come.
    async with _client(api) as client:
        made = await client.post(
            "/tasks/reprocess",
            json={"where": {"preset": "default"}, "ops": [{"op": "blur", "radius": 4}], "max_in_flight": 1},
        )
        assert made.status_code == 202, made.text
        job_id = made.json()["job_id"]
        await _job_when(client, job_id, lambda job: job["queued"] >= 1, "under way")
        posted = await client.post(
            "/upload", files={"file": ("now.jpg", images.jpeg(), "image/jpeg")}, data={"preset": "thumbnail"}
        )
        assert (await final_status(client, posted.json()["task_id"]))["status"] == "done"
        job = await _job(client, job_id)
        assert job["queued"] < job["matched"], job
        assert (await client.post(f"/jobs/{job_id}/cancel")).status_code == 200
        await _job_when(client, job_id, lambda job: job["in_flight"] == 0, "drained")
