"""`python -m client` as a user runs it: a real subprocess against the real API and a worker process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.deps import API_KEY_REQUIRED
from api.uploads import FIELD_TOO_LARGE, TOO_LARGE
from core.formats import UNSUPPORTED_MESSAGE
from core.processing.forms import FOCUS_INVALID
from devstack.stack import PROJECT_ROOT, running_api, start_worker, stop_process
from tests import images


@pytest.fixture(scope="module")
def worker_process(stack_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    log_file = workdir / "client-worker.log"
    process = start_worker(stack_env, log_file=log_file)
    yield process
    assert stop_process(process) == 0, log_file.read_text()[-3000:]


def run_client(*args: str, url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The client as a separate program, with only its own environment variables set."""
    command = [sys.executable, "-m", "client", *args]
    environment = {"PATH": "/usr/bin:/bin", "IMAGEQUEUE_URL": url, **(env or {})}
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    first, second = tmp_path / "first.jpg", tmp_path / "second.png"
    first.write_bytes(images.jpeg(640, 480))
    second.write_bytes(images.png(200, 150))
    return [first, second]


def test_upload_wait_json_follows_every_file_to_done_and_keeps_stdout_for_the_results(
    api_process: str, worker_process: subprocess.Popen, photos: list[Path]
) -> None:
    ran = run_client("upload", *map(str, photos), "--wait", "--json", "--concurrency", "2", url=api_process)

    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)  # nothing but the JSON on stdout
    assert [result["file"] for result in results] == [str(path) for path in photos]
    for result in results:
        assert result["status"] == "done", result
        assert result["error"] is None
        assert isinstance(result["task_id"], int)
        served = httpx.get(result["processed_url"])
        assert served.status_code == 200 and served.headers["content-type"].startswith("image/")
    assert "uploaded first.jpg" in ran.stderr and "uploaded second.png" in ran.stderr, "progress on stderr"
    assert "2/2 uploaded, 2 done, 0 failed" in ran.stderr


def test_a_refused_file_exits_1_with_the_servers_words_and_the_rest_still_uploads(
    api_process: str, photos: list[Path], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all\n")

    ran = run_client("upload", str(notes), str(photos[0]), url=api_process)

    assert ran.returncode == 1, ran.stderr
    assert f"refused notes.txt: {UNSUPPORTED_MESSAGE}" in ran.stderr
    table = ran.stdout.splitlines()
    assert table[0].split() == ["FILE", "TASK", "STATUS", "RESULT"]
    refused = next(line for line in table if line.startswith(str(notes)))
    accepted = next(line for line in table if line.startswith(str(photos[0])))
    assert refused.split()[1:3] == ["-", "refused"] and UNSUPPORTED_MESSAGE in refused
    assert accepted.split()[2] == "accepted"


def test_form_fields_are_sent_for_the_server_to_judge(api_process: str, photos: list[Path]) -> None:
    fine = run_client("upload", str(photos[0]), "--preset", "thumbnail", url=api_process)
    bad_op = run_client("upload", str(photos[0]), "--ops", '[{"op": "rotate"}]', url=api_process)
    too_big = run_client("upload", str(photos[0]), "--preset", "x" * 9000, url=api_process)

    assert fine.returncode == 0, fine.stderr
    assert bad_op.returncode == 1 and "`ops`: [0].degrees: Field required" in bad_op.stderr, bad_op.stderr
    assert too_big.returncode == 1 and FIELD_TOO_LARGE in too_big.stderr, too_big.stderr


def test_focus_is_sent_as_the_form_field_and_shown_in_the_status(
    api_process: str, photos: list[Path]
) -> None:
    crop = '[{"op": "crop", "aspect": "1:1", "gravity": "focus"}]'
    uploaded = run_client(
        "upload", str(photos[0]), "--ops", crop, "--focus", "0.3,0.6", "--json", url=api_process
    )
    assert uploaded.returncode == 0, uploaded.stderr
    task_id = json.loads(uploaded.stdout)[0]["task_id"]

    status = run_client("status", str(task_id), "--json", url=api_process)
    assert json.loads(status.stdout)["focus"] == [0.3, 0.6]
    readable = run_client("status", str(task_id), url=api_process)
    assert "  focus:     0.3,0.6\n" in readable.stdout, readable.stdout

    out_of_range = run_client("upload", str(photos[0]), "--focus", "2,0.5", url=api_process)
    assert out_of_range.returncode == 1 and FOCUS_INVALID in out_of_range.stderr, out_of_range.stderr
    # A shape that is not x,y never reaches the server: a usage error, as for --ops that is not JSON.
    typo = run_client("upload", str(photos[0]), "--focus", "0.3;0.6", url=api_process)
    assert typo.returncode == 2 and "--focus: must be two numbers x,y" in typo.stderr, typo.stderr


def test_priority_is_sent_as_the_form_field_and_shown_in_the_status(
    api_process: str, photos: list[Path]
) -> None:
    uploaded = run_client("upload", str(photos[0]), "--priority", "bulk", "--json", url=api_process)
    assert uploaded.returncode == 0, uploaded.stderr
    task_id = json.loads(uploaded.stdout)[0]["task_id"]

    status = run_client("status", str(task_id), "--json", url=api_process)
    assert json.loads(status.stdout)["priority"] == "bulk"
    readable = run_client("status", str(task_id), url=api_process)
    assert "  priority:  bulk\n" in readable.stdout, readable.stdout
    # Not one of the three: a usage error before anything is sent.
    typo = run_client("upload", str(photos[0]), "--priority", "urgent", url=api_process)
    assert typo.returncode == 2 and "--priority: invalid choice" in typo.stderr, typo.stderr


def test_status_list_and_delete(api_process: str, photos: list[Path]) -> None:
    uploaded = run_client("upload", *map(str, photos), "--json", url=api_process)
    assert uploaded.returncode == 0, uploaded.stderr
    first, second = (result["task_id"] for result in json.loads(uploaded.stdout))

    status = run_client("status", str(first), "--json", url=api_process)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["task_id"] == first
    readable = run_client("status", str(first), url=api_process)
    assert readable.stdout.startswith(f"task {first}: "), readable.stdout
    assert "file:" in readable.stdout and "first.jpg" in readable.stdout

    listed = run_client("list", "--limit", "2", "--json", url=api_process)
    assert listed.returncode == 0, listed.stderr
    assert {item["task_id"] for item in json.loads(listed.stdout)} == {first, second}, "the two newest"
    table = run_client("list", "--limit", "2", url=api_process).stdout.splitlines()
    assert table[0].split() == ["TASK", "STATUS", "UPLOADED", "FILE", "RESULT"] and len(table) == 3

    deleted = run_client("delete", str(second), url=api_process)
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted task {second}\n"), deleted.stderr
    gone = run_client("status", str(second), url=api_process)
    assert gone.returncode == 1
    assert gone.stderr == "error: Task not found\n"
    assert gone.stdout == ""


def test_a_file_over_the_servers_limit_is_refused_without_retrying_it(
    api_process: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(images.jpeg() + bytes(int(stack_env["MAX_UPLOAD_BYTES"]) * 2))

    ran = run_client("upload", str(big), url=api_process)

    assert ran.returncode == 1
    # The server answers 413 and closes; the client either reads that answer or sees the connection
    # reset mid-file (the answer lost with it) and says what that most likely means.
    said = ran.stderr.splitlines()[0]
    limit = TOO_LARGE.format(limit=int(stack_env["MAX_UPLOAD_BYTES"]))
    assert said == f"refused big.jpg: {limit}" or said.endswith("(is the file over its upload size limit?)")


def test_the_api_key_comes_from_the_option_or_the_environment(
    stack_env: dict[str, str], workdir: Path, photos: list[Path]
) -> None:
    key = "client-test-key-0123456789"
    with running_api({**stack_env, "API_KEYS": key}, log_file=workdir / "client-keys-api.log") as url:
        without = run_client("upload", str(photos[0]), url=url)
        from_env = run_client("upload", str(photos[0]), "--json", url=url, env={"IMAGEQUEUE_API_KEY": key})
        task_id = json.loads(from_env.stdout)[0]["task_id"]
        from_option = run_client("status", str(task_id), "--api-key", key, url=url)
        wrong = run_client("status", str(task_id), "--api-key", "another-key-0123456789", url=url)

    assert without.returncode == 1 and f"refused first.jpg: {API_KEY_REQUIRED}" in without.stderr
    assert from_env.returncode == 0, from_env.stderr
    assert from_option.returncode == 0 and from_option.stdout.startswith(f"task {task_id}: ")
    assert wrong.returncode == 1 and wrong.stderr == f"error: {API_KEY_REQUIRED}\n"


def test_uploads_over_the_keys_rate_wait_as_retry_after_says_and_all_land(
    stack_env: dict[str, str], workdir: Path, tmp_path: Path
) -> None:
    key = "client-limited-key-0123456789"
    # 20 a minute: the first 20 at once, then one each 3 s.
    api_keys = json.dumps([{"key": key, "uploads_per_minute": 20}])
    files = []
    for index in range(22):
        files.append(tmp_path / f"photo-{index}.jpg")
        files[-1].write_bytes(images.jpeg(32 + index, 32))
    log_file = workdir / "client-limited-api.log"
    with running_api({**stack_env, "API_KEYS": api_keys}, log_file=log_file) as url:
        ran = run_client(
            "upload", *map(str, files), "--json", "--concurrency", "4", "--api-key", key, url=url
        )

    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)
    assert [result["status"] for result in results] == ["accepted"] * 22
    assert len({result["task_id"] for result in results}) == 22, "no file made two tasks"
    assert '"POST /upload HTTP/1.1" 429' in log_file.read_text(), "the limit was met on the way"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["upload", "no-such-file.jpg"], "not a file: no-such-file.jpg"),
        (["upload", "README.md", "--ops", "{not json"], "--ops is not valid JSON"),
        (["upload", "README.md", "--concurrency", "0"], "must be 1 or more"),
        (["status", "seven"], "not a whole number: 'seven'"),
        (["frobnicate"], "invalid choice"),
        (["list", "--url", "localhost:8000"], "must start with http:// or https://"),
    ],
)
def test_usage_errors_exit_2_before_anything_is_sent(args: list[str], message: str) -> None:
    # Nothing listens at this URL: a usage error must not even try to connect.
    ran = run_client(*args, url="http://127.0.0.1:9")

    assert ran.returncode == 2, ran.stderr
    assert message in ran.stderr
    assert ran.stdout == ""


def test_an_unreachable_server_is_said_in_words(photos: list[Path]) -> None:
    ran = run_client("list", url="http://127.0.0.1:9")

    assert ran.returncode == 1
    assert "cannot reach the server at http://127.0.0.1:9" in ran.stderr


async def _cut_proxy(target: httpx.URL, cut_after: int) -> tuple[asyncio.Server, list[int]]:
    """A TCP proxy to `target` that resets the first connection once it has carried `cut_after`
    bytes towards the server (a network that drops mid-upload); later connections pass whole."""
    cuts: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None) -> None:
        carried = 0
        try:
            while chunk := await reader.read(65536):
                carried += len(chunk)
                if limit is not None and carried > limit:
                    cuts.append(carried)
                    writer.transport.abort()
                    return
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(target.host, target.port)
        limit = cut_after if not cuts else None
        upstream = asyncio.create_task(pipe(client_reader, server_writer, limit))
        await pipe(server_reader, client_writer, None)
        if cuts and not client_writer.is_closing():
            client_writer.transport.abort()
        await upstream

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, cuts


async def test_a_big_file_goes_resumable_and_survives_a_dropped_connection(
    api_process: str, tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    pixels = Image.frombytes("RGB", (500, 400), os.urandom(500 * 400 * 3))
    pixels.save(big, "PNG")
    size = big.stat().st_size
    server, cuts = await _cut_proxy(httpx.URL(api_process), cut_after=size // 2)
    port = server.sockets[0].getsockname()[1]
    async with server:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "client",
            "upload",
            str(big),
            "--json",
            "--resumable-from",
            "100000",
            cwd=PROJECT_ROOT,
            env={"PATH": "/usr/bin:/bin", "IMAGEQUEUE_URL": f"http://127.0.0.1:{port}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 0, stderr.decode()
    assert cuts, "the proxy cut a connection mid-upload"
    task_id = json.loads(stdout)[0]["task_id"]
    async with httpx.AsyncClient(base_url=api_process) as http:
        original = await http.get(f"/tasks/{task_id}/original")
    assert original.content == big.read_bytes()


def test_a_big_file_that_is_not_an_image_is_refused_in_the_servers_words(
    api_process: str, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"not an image" * 20_000)

    ran = run_client("upload", str(notes), "--resumable-from", "1000", url=api_process)

    assert ran.returncode == 1
    assert f"refused notes.png: {UNSUPPORTED_MESSAGE}" in ran.stderr
