"""HEAD on every page, file and JSON route answers like GET without the body (RFC 9110 §9.3.2),
to httpx and to `curl -I` alike."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import httpx
import pytest

from tests import images
from tests.ranges import assert_ranges_served
from tests.waiting import final_status

# What a HEAD must repeat from GET; Date and X-Request-ID differ by nature.
SAME_HEADERS = ("content-type", "content-length", "etag", "last-modified", "cache-control", "location")


@pytest.fixture(scope="module")
def done_task(api_process: str, worker_process: subprocess.Popen) -> dict:
    async def make() -> dict:
        async with httpx.AsyncClient(base_url=api_process, timeout=30) as client:
            created = await client.post("/upload", files={"file": ("head.jpg", images.jpeg(), "image/jpeg")})
            return await final_status(client, created.json()["task_id"])

    return asyncio.run(make())


def _paths(task: dict) -> list[str]:
    task_id = task["task_id"]
    return [
        "/",
        "/gallery",
        f"/result/{task_id}",
        f"/status/{task_id}",
        f"/tasks/{task_id}",
        f"/tasks/{task_id}/original",
        task["processed_url"],
        "/processed/head.jpg",  # a bookmark: 303
        "/status/999999",  # 404
        "/health",
        "/presets",
        "/static/style.css",
    ]


async def test_head_answers_like_get_without_the_body(client: httpx.AsyncClient, done_task: dict) -> None:
    for path in _paths(done_task):
        got = await client.get(path)
        head = await client.head(path)

        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        for name in SAME_HEADERS:
            assert head.headers.get(name) == got.headers.get(name), (path, name)
        if got.status_code == 200:
            assert int(head.headers["content-length"]) == len(got.content), path


def test_curl_head_sees_the_files_size_and_validator(api_process: str, done_task: dict) -> None:
    url = api_process + done_task["processed_url"]
    got = httpx.get(url)

    result = subprocess.run(
        ["curl", "-sS", "-I", url], capture_output=True, text=True, timeout=30, check=True
    )

    lines = result.stdout.splitlines()
    assert lines[0].split()[1] == "200", result.stdout
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {name.lower(): value for name, value in headers.items()}
    assert headers["content-length"] == str(len(got.content))
    assert headers["etag"] == got.headers["etag"]


async def test_head_on_an_event_stream_ends_with_its_headers(client: httpx.AsyncClient) -> None:
    # A pending task (no worker asked for here beyond the module's): its stream would stay open.
    created = await client.post("/upload", files={"file": ("s.png", images.png(), "image/png")})
    head = await client.head(f"/tasks/{created.json()['task_id']}/events", timeout=10)

    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")


async def test_head_where_get_is_not_allowed_is_405_as_for_get(client: httpx.AsyncClient) -> None:
    head = await client.head("/upload")

    assert head.status_code == 405
    assert "POST" in head.headers["allow"]


# Node 20's fetch: a HEAD that gets a body, or no Content-Length, is a client-visible bug.
_NODE_HEAD = """
const response = await fetch(process.argv[1], { method: "HEAD" });
const body = await response.arrayBuffer();
console.log(JSON.stringify({
  status: response.status,
  length: response.headers.get("content-length"),
  etag: response.headers.get("etag"),
  body: body.byteLength,
}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_fetch_head_sees_the_files_size_and_no_body(api_process: str, done_task: dict) -> None:
    url = api_process + done_task["processed_url"]
    got = httpx.get(url)

    result = subprocess.run(
        ["node", "--input-type=module", "-e", _NODE_HEAD, url], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "status": 200,
        "length": str(len(got.content)),
        "etag": got.headers["etag"],
        "body": 0,
    }


async def test_ranges_on_local_files_answer_as_on_objects(client: httpx.AsyncClient, done_task: dict) -> None:
    """The local backend's files (FileResponse) and the object backends' streams keep one contract
    (tests/ranges.py; the nats and s3 suites ask it of theirs)."""
    path = f"/tasks/{done_task['task_id']}/original"
    data = (await client.get(path)).content
    await assert_ranges_served(client, path, data)
