"""POST /tasks/{id}/reprocess: new outputs from the stored original, the old ones served until the
switch and removed after it; 409 for a task that is not finished; safe when a worker dies mid-way."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import TASK_NOT_FOUND
from api.routes.reprocess import PROCESSING_REQUIRED
from core import queue
from core.reprocessing import NOT_REPROCESSABLE
from devstack.stack import start_worker, stop_process
from tests import images
from tests.api.test_api_keys import ALICE, BOB, keyed, keyed_api
from tests.api.test_lease_sweep import last_message_id
from tests.api.test_render_cost import BOMB_REFUSED, ENLARGE_AND_BACK
from tests.waiting import eventually, final_status, task_row, task_row_when

__all__ = ["keyed", "keyed_api"]  # fixtures borrowed from the API-key tests

# Heavy enough to be still rendering (in a child process) when the test kills its worker.
SLOW_OPS = [{"op": "blur", "radius": 50}] * 20


class Workers:
    """Workers this module starts and stops itself: the tests need the queue without one."""

    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        self._env = env
        self._log_file = log_file
        self.running: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        process = start_worker(self._env, log_file=self._log_file)
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            stop_process(process)
        self.running.clear()


@pytest.fixture
def workers(stack_env: dict[str, str], workdir: Path) -> Iterator[Workers]:
    started = Workers(stack_env, workdir / "reprocess-worker.log")
    yield started
    started.stop_all()


async def _done_task(client: httpx.AsyncClient, **data: str) -> dict:
    posted = await client.post(
        "/upload", files={"file": ("r.jpg", images.jpeg(400, 300), "image/jpeg")}, data=data
    )
    assert posted.status_code == 200, posted.text
    status = await final_status(client, posted.json()["task_id"])
    assert status["status"] == "done", status
    return status


async def test_old_outputs_are_served_until_the_new_ones_replace_them(
    client: httpx.AsyncClient, workers: Workers, processed_dir: Path, db: AsyncSession
) -> None:
    workers.start()
    before = await _done_task(client, preset="thumbnail")
    task_id = before["task_id"]
    old_url = before["processed_url"]
    old_bytes = (await client.get(old_url)).content
    workers.stop_all()  # nothing takes the reprocess until the test says so

    answer = await client.post(
        f"/tasks/{task_id}/reprocess",
        json={"outputs": {"small": [{"op": "resize", "width": 50}], "big": "default"}},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["generation"] == 1

    # Queued and waiting: the old output is still listed and served, byte for byte.
    status = (await client.get(f"/tasks/{task_id}")).json()
    assert status["status"] == "pending"
    assert status["processed_url"] == old_url
    assert [output["name"] for output in status["outputs"]] == ["image"]
    served = await client.get(old_url)
    assert served.status_code == 200 and served.content == old_bytes
    # A second reprocess while this one waits is refused, saying why.
    again = await client.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"})
    assert again.status_code == 409
    assert again.json()["detail"] == NOT_REPROCESSABLE.format(status="pending")

    workers.start()
    after = await final_status(client, task_id)
    assert after["status"] == "done", after
    assert [output["name"] for output in after["outputs"]] == ["small", "big"]
    new_urls = [output["url"] for output in after["outputs"]]
    assert old_url not in new_urls
    assert all("-g1" in url for url in new_urls)
    for output in after["outputs"]:
        fetched = await client.get(output["url"])
        assert fetched.status_code == 200
    assert after["outputs"][0]["width"] == 50

    # The replaced file goes soon after the switch (the API's reprocess loop).
    old_file = processed_dir / old_url.rsplit("/", 1)[1]

    async def old_removed() -> bool:
        return not old_file.exists()

    await eventually(old_removed, timeout=20, what="the replaced output removed")
    assert (await client.get(old_url)).status_code == 404
    # SQL NULL (not a JSON null), so the loop's scan passes the row by from now on.
    cleared = await db.scalar(
        text("SELECT superseded_outputs IS NULL FROM image_tasks WHERE id = :id"), {"id": task_id}
    )
    assert cleared is True


async def test_a_worker_killed_mid_reprocess_loses_nothing(
    client: httpx.AsyncClient, workers: Workers, db: AsyncSession
) -> None:
    workers.start()
    before = await _done_task(client)
    task_id = before["task_id"]
    old_url = before["processed_url"]

    answer = await client.post(f"/tasks/{task_id}/reprocess", json={"ops": json.dumps(SLOW_OPS)})
    assert answer.status_code == 202, answer.text
    await task_row_when(db, task_id, lambda row: row.status == "processing", what="being reprocessed")
    for process in workers.running:
        process.send_signal(signal.SIGKILL)
        process.wait()
    workers.running.clear()

    # The killed attempt changed nothing that is served.
    row = await task_row(db, task_id)
    assert row.status == "processing"
    assert row.outputs is not None and row.outputs[0]["file"] == old_url.rsplit("/", 1)[1]
    assert (await client.get(old_url)).status_code == 200

    workers.start()
    after = await final_status(client, task_id, timeout=120)
    assert after["status"] == "done", after
    assert after["processed_url"] != old_url
    assert (await client.get(after["processed_url"])).status_code == 200


async def test_a_task_still_running_is_409_and_a_bad_body_422(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    posted = await client.post("/upload", files={"file": ("w.jpg", images.jpeg(), "image/jpeg")})
    task_id = posted.json()["task_id"]  # no worker runs: it stays pending

    refused = await client.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"})
    assert refused.status_code == 409
    assert refused.json()["detail"] == NOT_REPROCESSABLE.format(status="pending")

    nothing = await client.post(f"/tasks/{task_id}/reprocess", json={})
    assert nothing.status_code == 422
    assert nothing.json()["detail"] == PROCESSING_REQUIRED
    for body, word in [
        ({"preset": "nope"}, "unknown preset"),
        ({"ops": [{"op": "explode"}]}, "`ops`"),
        ({"preset": "thumbnail", "ops": [{"op": "grayscale"}]}, "only one"),
        ({"presets": "thumbnail"}, "body"),
    ]:
        bad = await client.post(f"/tasks/{task_id}/reprocess", json=body)
        assert bad.status_code == 422, bad.text
        assert word in bad.json()["detail"]
    for raw in (b"[" * 5000, b"not json", b"[1, 2]", b'{"preset": "x\\u0000"}'):
        bad = await client.post(
            f"/tasks/{task_id}/reprocess", content=raw, headers={"Content-Type": "application/json"}
        )
        assert bad.status_code == 422, bad.text
    huge = await client.post(f"/tasks/{task_id}/reprocess", content=b" " * 20_000 + b"{}")
    assert huge.status_code == 413
    missing = await client.post("/tasks/2147483647/reprocess", json={"preset": "thumbnail"})
    assert missing.status_code == 404
    assert missing.json()["detail"] == TASK_NOT_FOUND

    workers.start()
    await final_status(client, task_id)


async def test_another_keys_task_cannot_be_reprocessed(keyed: httpx.AsyncClient, workers: Workers) -> None:
    workers.start()
    posted = await keyed.post(
        "/upload", files={"file": ("k.jpg", images.jpeg(), "image/jpeg")}, headers=ALICE
    )
    task_id = posted.json()["task_id"]
    await eventually(lambda: _is_final(keyed, task_id), timeout=60, what="alice's task finished")

    bob = await keyed.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"}, headers=BOB)
    assert bob.status_code == 404
    nobody = await keyed.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"})
    assert nobody.status_code == 401
    alice = await keyed.post(f"/tasks/{task_id}/reprocess", json={"preset": "thumbnail"}, headers=ALICE)
    assert alice.status_code == 202, alice.text
    await eventually(lambda: _is_final(keyed, task_id), timeout=60, what="alice's reprocess finished")


async def _is_final(client: httpx.AsyncClient, task_id: int) -> bool:
    status = (await client.get(f"/tasks/{task_id}", headers=ALICE)).json()
    return status["status"] in ("done", "failed")


async def test_the_outbox_relay_queues_a_reprocess_under_its_generations_message_id(
    client: httpx.AsyncClient, db: AsyncSession, stack_env: dict[str, str]
) -> None:
    # No worker: the row stays as the test leaves it. A reprocess whose own publish was lost
    # (generation 3, queued_at unset) must not be taken by JetStream for a copy of the upload's
    # message (`task-<id>-0`, still in the duplicate window): the relay's id carries the generation.
    posted = await client.post("/upload", files={"file": ("g.jpg", images.jpeg(), "image/jpeg")})
    task_id = posted.json()["task_id"]
    await db.execute(
        text(
            "UPDATE image_tasks SET processing = processing || '{\"generation\": 3}'::jsonb, queued_at = NULL"
            " WHERE id = :id"
        ),
        {"id": task_id},
    )
    await db.commit()

    async def relayed() -> bool:
        return await last_message_id(stack_env) == queue.message_id(task_id, 0, 3)

    await eventually(relayed, timeout=20, what="the relay's message for generation 3")
    assert queue.message_id(task_id, 0, 3) != queue.message_id(task_id, 0)
    # Nothing left for the workers of later tests to take up.
    assert (await client.delete(f"/tasks/{task_id}")).status_code == 204


async def test_a_reprocess_over_the_render_cost_limit_is_refused_as_an_upload_would_be(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    workers.start()
    before = await _done_task(client)
    task_id = before["task_id"]

    refused = await client.post(f"/tasks/{task_id}/reprocess", json={"ops": ENLARGE_AND_BACK})

    assert refused.status_code == 422
    assert refused.json()["detail"] == BOMB_REFUSED  # the upload's words, to the letter
    after = (await client.get(f"/tasks/{task_id}")).json()
    assert after["status"] == "done" and after["processed_url"] == before["processed_url"]
