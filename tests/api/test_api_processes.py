"""API_PROCESSES=2: one port served by two processes under `python -m api.serve`'s supervisor.

Started as every API in the suite is (devstack's `start_api`, the launcher Dockerfile.api's CMD
runs), with API_PROCESSES in its environment. Who answered what is read without any debug hook
(bench.api_processes: the children from /proc, each one's own upload count from its metrics file),
beside the summed total that /metrics serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.supervisor import METRICS_DIR_VARIABLE
from bench.api_processes import accepted_by, metrics_dir, serving_children
from core.storage import TEMP_PREFIX
from devstack.servers import free_port
from devstack.stack import start_api, stop_process, wait_until_ready
from tests import images
from tests.waiting import eventually

PROCESSES = 2
UPLOADS = 40
# The launcher's --timeout-graceful-shutdown (devstack passes 20) and a loaded machine's margin.
STOP_WITHIN_SECONDS = 20 + 10


@dataclass
class Api:
    process: subprocess.Popen
    port: int
    log_file: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def children(self) -> set[int]:
        return serving_children(self.process.pid)

    def metrics_dir(self, child: int) -> Path:
        folder = metrics_dir(child)
        assert folder is not None, f"child {child} was not given {METRICS_DIR_VARIABLE}"
        return folder

    @staticmethod
    def accepted_by(child: int) -> float:
        return accepted_by(child)

    def log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]


def _start(stack_env: dict[str, str], workdir: Path, name: str, **settings: str) -> Api:
    port = free_port()
    log_file = workdir / f"{name}.log"
    process = start_api({**stack_env, **settings}, port, log_file=log_file)
    return Api(process, port, log_file)


@contextlib.contextmanager
def _running(stack_env: dict[str, str], workdir: Path, name: str, **settings: str) -> Iterator[Api]:
    api = _start(stack_env, workdir, name, **settings)
    try:
        try:
            wait_until_ready(api.base_url, timeout=60, process=api.process)
        except Exception:
            print(api.log_tail())
            raise
        yield api
    finally:
        stop_process(api.process)


@pytest.fixture(scope="module")
def api(stack_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    with _running(stack_env, workdir, "two-processes-api", API_PROCESSES=str(PROCESSES)) as running:
        yield running


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """A connection of its own for every request: which process accepts a connection is the
    kernel's choice, and a connection kept open would stay with its process (dead or not)."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30, limits=fresh) as http:
        yield http


async def _upload(client: httpx.AsyncClient, data: bytes, index: int) -> httpx.Response:
    return await client.post("/upload", files={"file": (f"p{index}.jpg", data, "image/jpeg")})


async def _accepted_total(client: httpx.AsyncClient) -> float:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "imagequeue_uploads_total" and sample.labels.get("outcome") == "accepted"
    )


async def _both_serving(api: Api) -> bool:
    return len(api.children()) == PROCESSES


# --- serving -------------------------------------------------------------------------------------


async def test_concurrent_uploads_all_succeed_and_both_processes_answer_some(
    api: Api, client: httpx.AsyncClient
) -> None:
    children = api.children()
    assert len(children) == PROCESSES, api.log_tail()
    before = {child: api.accepted_by(child) for child in children}
    data = images.jpeg(64, 48)
    gate = asyncio.Semaphore(8)

    async def one(index: int) -> httpx.Response:
        async with gate:
            return await _upload(client, data, index)

    responses = await asyncio.gather(*(one(index) for index in range(UPLOADS)))

    assert [response.status_code for response in responses] == [200] * UPLOADS
    served = {child: api.accepted_by(child) - before[child] for child in children}
    assert sum(served.values()) == UPLOADS, served
    assert all(count > 0 for count in served.values()), f"one process answered them all: {served}"


async def test_a_burst_of_kept_alive_connections_is_spread_over_the_processes(api: Api) -> None:
    """16 connections opened at once and kept alive, as a client's pool opens them: on one shared
    listening socket the first process to wake accepted them all (600/0 in 2 runs of 4); with a
    socket per process the kernel spreads them (all 16 on one process: 1 chance in 32,768)."""
    children = api.children()
    before = {child: api.accepted_by(child) for child in children}
    data = images.jpeg(64, 48)
    pool = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30, limits=pool) as http:
        for _ in range(2):  # the second round goes down the 16 connections the first one opened
            responses = await asyncio.gather(*(_upload(http, data, index) for index in range(16)))
            assert [response.status_code for response in responses] == [200] * 16

    served = {child: api.accepted_by(child) - before[child] for child in children}
    assert sum(served.values()) == 32, served
    assert all(count > 0 for count in served.values()), f"one process took every connection: {served}"


async def test_metrics_count_every_accepted_upload_once_whichever_process_answers(
    api: Api, client: httpx.AsyncClient
) -> None:
    before = await _accepted_total(client)
    data = images.jpeg(64, 48)
    responses = await asyncio.gather(*(_upload(client, data, index) for index in range(10)))
    assert [response.status_code for response in responses] == [200] * 10

    # Each scrape on a connection of its own (the client's), so both processes answer some of them.
    totals = {await _accepted_total(client) for _ in range(10)}
    assert totals == {before + 10}


async def test_the_scrape_has_no_per_process_series_and_no_duplicates(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")

    samples = [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]
    assert len(samples) == len(set(samples))
    names = {name for name, _ in samples}
    assert not {name for name in names if name.startswith(("process_", "python_gc_"))}
    assert "python_info" in names
    assert {"imagequeue_database_up", "imagequeue_tasks", "imagequeue_nats_up"} <= names


async def test_a_killed_process_is_replaced_and_the_server_keeps_answering(
    api: Api, client: httpx.AsyncClient
) -> None:
    before_total = await _accepted_total(client)
    children = api.children()
    victim = min(children)

    os.kill(victim, signal.SIGKILL)

    # Answered throughout: the other process serves while the supervisor starts a new one.
    async def replaced() -> bool:
        health = await client.get("/health")
        assert health.status_code == 200
        now = api.children()
        return victim not in now and len(now) == PROCESSES

    await eventually(replaced, timeout=60, what=lambda: f"children {api.children()}:\n{api.log_tail()}")
    newcomer = (api.children() - children).pop()
    assert api.process.poll() is None
    # The new process serves (it answers the supervisor's health check once started: poll uploads
    # until it has taken one), and the dead one's counts stay in the total.
    data = images.jpeg(64, 48)

    async def newcomer_served() -> bool:
        assert (await _upload(client, data, 0)).status_code == 200
        return api.accepted_by(newcomer) > 0

    await eventually(newcomer_served, timeout=60, what="the new process never answered an upload")
    assert await _accepted_total(client) >= before_total + 1


async def test_sighup_replaces_every_process_on_its_socket_and_sigttin_adds_none(
    api: Api, client: httpx.AsyncClient
) -> None:
    """uvicorn's rolling restart, each newcomer on its predecessor's listening socket; SIGTTIN (one
    more process in uvicorn) is ignored, as the count is API_PROCESSES."""
    await eventually(lambda: _both_serving(api), timeout=60, what=lambda: f"children {api.children()}")
    before = api.children()

    api.process.send_signal(signal.SIGTTIN)
    api.process.send_signal(signal.SIGHUP)

    async def all_replaced() -> bool:
        # Answered throughout, but a connection an old process had accepted without reading its
        # request yet is closed by its graceful stop (uvicorn closes idle connections): such a
        # request is sent again, as clients do with one that got no answer.
        with contextlib.suppress(httpx.RemoteProtocolError):
            assert (await client.get("/health")).status_code == 200
        now = api.children()
        return len(now) == PROCESSES and not now & before

    await eventually(all_replaced, timeout=90, what=lambda: f"children {api.children()}:\n{api.log_tail()}")
    newcomers = api.children()
    counts = {child: api.accepted_by(child) for child in newcomers}
    data = images.jpeg(64, 48)

    async def each_served() -> bool:
        assert (await _upload(client, data, 0)).status_code == 200
        return all(api.accepted_by(child) > counts[child] for child in newcomers)

    # Each newcomer serves a socket of its own: fresh connections reach both.
    await eventually(each_served, timeout=60, what="a replaced process never answered an upload")
    assert api.children() == newcomers


# --- stopping and refusing -------------------------------------------------------------------------


def _upload_parts(data: bytes) -> tuple[bytes, bytes]:
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--b0undary--\r\n"
    )
    head = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    half = len(body) // 2
    return head + body[:half], body[half:]


async def test_sigterm_lets_an_upload_in_flight_finish_then_exits_0_and_removes_the_metrics(
    stack_env: dict[str, str], workdir: Path
) -> None:
    uploads_dir = Path(stack_env["UPLOADS_DIR"])
    with _running(stack_env, workdir, "stopped-api", API_PROCESSES=str(PROCESSES)) as api:
        metrics_dir = api.metrics_dir(min(api.children()))
        assert metrics_dir.is_dir()
        first, rest = _upload_parts(images.jpeg(320, 240))
        partials_before = set(uploads_dir.glob(f"{TEMP_PREFIX}*"))
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(first)
        await writer.drain()

        # In flight: the process that took it is writing the upload's temporary file.
        async def streaming() -> bool:
            return bool(set(uploads_dir.glob(f"{TEMP_PREFIX}*")) - partials_before)

        await eventually(streaming, timeout=30, what="the upload never reached the API")
        stopping = time.monotonic()
        api.process.send_signal(signal.SIGTERM)
        writer.write(rest)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), timeout=STOP_WITHIN_SECONDS)
        writer.close()

        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        code = await asyncio.to_thread(api.process.wait, STOP_WITHIN_SECONDS)
        assert code == 0, api.log_tail()
        assert time.monotonic() - stopping < STOP_WITHIN_SECONDS
        assert not metrics_dir.exists()
        assert not api.children()


BAD_SETTING = "invalid setting: API_PROCESSES must be a whole number from 1 to 64, got "


@pytest.mark.parametrize(
    ("settings", "args", "message"),
    [
        ({"API_PROCESSES": "0"}, (), BAD_SETTING + "0"),
        ({"API_PROCESSES": "65"}, (), BAD_SETTING + "65"),
        ({"API_PROCESSES": "two"}, (), BAD_SETTING + "'two'"),
        ({"API_PROCESSES": "1.5"}, (), BAD_SETTING + "1.5"),
        ({}, ("--processes", "0"), "--processes must be a whole number from 1 to 64"),
        ({}, ("--processes", "x"), "--processes: invalid int value: 'x'"),
    ],
)
def test_bad_process_counts_exit_2_with_the_message(
    stack_env: dict[str, str], workdir: Path, settings: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    log_file = workdir / "bad-processes-api.log"
    log_file.unlink(missing_ok=True)
    process = start_api({**stack_env, **settings}, free_port(), log_file=log_file, extra_args=args)
    try:
        code = process.wait(30)
    finally:
        stop_process(process)

    assert code == 2
    assert message in log_file.read_text()


def test_processes_that_cannot_start_stop_the_server_instead_of_being_restarted(
    stack_env: dict[str, str], workdir: Path
) -> None:
    log_file = workdir / "unstartable-api.log"
    env = {**stack_env, "API_PROCESSES": str(PROCESSES)}
    process = start_api(env, free_port(), log_file=log_file, app="api.no_such_module:app")
    try:
        code = process.wait(60)
    finally:
        stop_process(process)

    log = log_file.read_text()
    assert code == 3, log[-3000:]
    assert "exited with code 3 before serving; stopped the API processes" in log
    assert log.count("Error loading ASGI app") <= PROCESSES  # none was started again


def test_a_second_server_on_the_same_port_is_refused(
    api: Api, stack_env: dict[str, str], workdir: Path
) -> None:
    """SO_REUSEPORT would let a second copy join the port and take half the connections: the probe
    bind without it makes that the usual `address in use`."""
    log_file = workdir / "second-api.log"
    env = {**stack_env, "API_PROCESSES": str(PROCESSES)}
    process = start_api(env, api.port, log_file=log_file)
    try:
        code = process.wait(60)
    finally:
        stop_process(process)

    assert code == 3, log_file.read_text()[-3000:]
    assert "Address already in use" in log_file.read_text()


def test_the_processes_die_with_a_killed_supervisor(stack_env: dict[str, str], workdir: Path) -> None:
    """A supervisor killed outright (SIGKILL, OOM) leaves nothing serving the port."""
    with _running(stack_env, workdir, "orphaned-api", API_PROCESSES=str(PROCESSES)) as api:
        children = api.children()
        assert len(children) == PROCESSES
        api.process.kill()
        api.process.wait(10)

        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{child}").exists() for child in children):
            assert time.monotonic() < deadline, f"children outlived their supervisor: {children}"
            time.sleep(0.1)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api.base_url}/health", timeout=5)


def test_a_child_whose_event_loop_is_stuck_counts_as_hung_in_the_health_check() -> None:
    """uvicorn's health check is answered by a thread of the child, which would vouch for a child
    whose event loop is stuck (a loop cannot be stuck from outside the process: the check is driven
    here through its real pipe, with the server's tick as a stuck loop leaves it). An answer left
    in the pipe by an earlier, timed-out check is not read as this one's."""
    from api.serve import ServeConfig, http_limits
    from api.supervisor import LOOP_STALL_SECONDS, ServedProcess
    from config import get_settings

    config = ServeConfig("api.main:app", limits=http_limits(get_settings()), workers=2)
    child = ServedProcess(config, [])
    server = child.server
    server.started = True

    def check() -> bool | None:
        answering = threading.Thread(target=child.pong, daemon=True)
        answering.start()
        health = child._healthcheck(5)
        answering.join(5)
        return health

    server.last_tick = time.monotonic() - LOOP_STALL_SECONDS - 1  # type: ignore[attr-defined]
    child.child_conn.send((True, 0.0))  # a late answer to an earlier ping
    assert check() is None, "a stuck loop was vouched for"
    server.last_tick = time.monotonic()  # type: ignore[attr-defined]  # the loop ticks again
    assert check() is True
    server.loop_done = True  # type: ignore[attr-defined]  # stopping: the loop has ended on purpose
    server.last_tick = time.monotonic() - LOOP_STALL_SECONDS - 1  # type: ignore[attr-defined]
    assert check() is True
