"""The API's HTTP limits (api/http_limits.py), attacked with raw sockets as they ship.

The API is started by devstack's `start_api` (what `make run` and the whole suite use), which runs the
launcher Dockerfile.api's CMD runs, with the same options; the limits are the HTTP_* settings' defaults,
which no shipped file changes (the suite's settings leave them alone too). Each attack is one from
issue 14: slow heads, oversized heads, stalled and short bodies, a flood of idle connections, and
64 MB heads against the API's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.http_limits import BODY_TIMEOUT, HEAD_TIMEOUT, HEAD_TOO_LARGE
from api.serve import LIMIT_SETTINGS
from config import _DEFAULTS, Settings, get_settings
from core.storage import TEMP_PREFIX
from devstack.servers import free_port
from devstack.stack import start_api, stop_process, wait_until_ready
from tests import images
from tests.test_compose import DOCKERFILES, _instructions, _process_argv
from tests.waiting import eventually

# How much later than its limit a close may come on a loaded two-core machine.
SLACK_SECONDS = 3.0


@dataclass
class Api:
    process: subprocess.Popen
    port: int
    settings: Settings

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def api(stack_env: dict[str, str], workdir: Path) -> Iterator[Api]:
    """An API process of its own (its memory is measured), started as the suite's is."""
    assert not set(LIMIT_SETTINGS) & set(stack_env), "the limits under test are the shipped defaults"
    port = free_port()
    log_file = workdir / "limits-api.log"
    process = start_api(stack_env, port, log_file=log_file)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", timeout=60, process=process)
        yield Api(process, port, get_settings())
    finally:
        stop_process(process)


def test_the_api_runs_the_images_command_with_the_shipped_limits(api: Api) -> None:
    image = _process_argv(_instructions(DOCKERFILES["api"]))
    started = [str(arg) for arg in api.process.args]  # type: ignore[union-attr]
    assert started[1:3] == image[1:3] == ["-m", "api.serve"]
    # The same launcher and options; only the interface (the image listens on all) and port differ.
    assert _options(started) == {**_options(image), "--host": "127.0.0.1", "--port": str(api.port)}
    assert {name: getattr(api.settings, name.lower()) for name in LIMIT_SETTINGS} == {
        name: _DEFAULTS[name] for name in LIMIT_SETTINGS
    }


def _options(argv: list[str]) -> dict[str, str]:
    """`--name value` and bare `--flag` options after the launcher's name, by name."""
    options = [*argv[argv.index("api.serve") + 1 :], "--"]
    return {
        name: "" if options[index + 1].startswith("--") else options[index + 1]
        for index, name in enumerate(options[:-1])
        if name.startswith("--")
    }


# --- raw sockets -----------------------------------------------------------------------------------


async def _connect(api: Api) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", api.port)


async def _answer(reader: asyncio.StreamReader, *, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not in time)."""
    received = b""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


async def _closed_after(reader: asyncio.StreamReader, started: float, *, limit: float) -> tuple[bytes, float]:
    answer = await _answer(reader, timeout=limit + SLACK_SECONDS)
    return answer, time.monotonic() - started


# --- heads -----------------------------------------------------------------------------------------


async def test_headers_over_the_byte_limit_are_answered_431_and_closed(api: Api) -> None:
    reader, writer = await _connect(api)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    answer = await _answer(reader, timeout=5)
    writer.close()

    assert _status(answer) == 431
    assert answer.endswith(HEAD_TOO_LARGE.encode())


async def test_a_thousand_headers_are_answered_431(api: Api) -> None:
    reader, writer = await _connect(api)
    headers = b"".join(b"X-H%d: 1\r\n" % index for index in range(1000))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    answer = await _answer(reader, timeout=5)
    writer.close()

    assert _status(answer) == 431


async def test_headers_within_the_limits_are_served(api: Api) -> None:
    reader, writer = await _connect(api)
    headers = b"".join(b"X-H%d: %s\r\n" % (index, b"v" * 200) for index in range(90))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n")
    answer = await _answer(reader, timeout=5)
    writer.close()

    assert _status(answer) == 200


async def test_slow_heads_are_closed_at_the_header_deadline(api: Api) -> None:
    """Slowloris: 50 connections each sending a header byte every second."""
    limit = api.settings.http_header_timeout_seconds

    async def slow_head() -> tuple[bytes, float]:
        reader, writer = await _connect(api)
        started = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    await asyncio.sleep(1)  # the attack's pace, not a wait for the server
                    writer.write(b"a")
                    await writer.drain()

        dripping = asyncio.create_task(drip())
        try:
            return await _closed_after(reader, started, limit=limit)
        finally:
            dripping.cancel()
            writer.close()

    results = await asyncio.gather(*(slow_head() for _ in range(50)))

    for answer, elapsed in results:
        assert limit - 0.5 <= elapsed <= limit + SLACK_SECONDS, elapsed
        assert _status(answer) == 408
        assert answer.endswith(HEAD_TIMEOUT.encode())


async def test_a_silent_connection_is_closed_at_the_header_deadline(api: Api) -> None:
    limit = api.settings.http_header_timeout_seconds
    reader, writer = await _connect(api)
    answer, elapsed = await _closed_after(reader, time.monotonic(), limit=limit)
    writer.close()

    assert answer == b""
    assert limit - 0.5 <= elapsed <= limit + SLACK_SECONDS


# --- bodies ----------------------------------------------------------------------------------------


def _partials(uploads_dir: Path) -> set[str]:
    return {path.name for path in uploads_dir.glob(f"{TEMP_PREFIX}*")}


def _upload_head(content_length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /upload HTTP/1.1\r\nHost: x\r\n" + extra + b"Content-Type: multipart/form-data; "
        b"boundary=limitsboundary\r\nContent-Length: %d\r\n\r\n" % content_length
    )


# What curl --http2 and Java's HttpClient add on plain HTTP: such a request's body is parsed apart
# (api/http_limits.py), under the same limits.
_H2C_OFFER = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)


_PART_HEAD = b'--limitsboundary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'


@pytest.mark.parametrize("offer", [b"", _H2C_OFFER], ids=["plain", "offering-h2c"])
async def test_a_stalled_upload_is_closed_at_the_idle_timeout_and_its_temp_file_removed(
    api: Api, uploads_dir: Path, offer: bytes
) -> None:
    limit = api.settings.http_body_idle_timeout_seconds
    before = _partials(uploads_dir)
    reader, writer = await _connect(api)
    writer.write(_upload_head(500_000, offer) + _PART_HEAD + images.png()[:100])
    await writer.drain()
    stalled = time.monotonic()

    await eventually(
        lambda: _async(bool(_partials(uploads_dir) - before)), timeout=10, what="the upload's temp file"
    )
    answer, elapsed = await _closed_after(reader, stalled, limit=limit)
    writer.close()

    assert limit - 0.5 <= elapsed <= limit + SLACK_SECONDS, elapsed
    assert _status(answer) == 408
    assert answer.endswith(BODY_TIMEOUT.encode())
    await eventually(
        lambda: _async(_partials(uploads_dir) <= before), timeout=10, what="the temp file removed"
    )


async def test_a_body_shorter_than_its_content_length_is_closed_at_the_idle_timeout(
    api: Api, uploads_dir: Path
) -> None:
    limit = api.settings.http_body_idle_timeout_seconds
    before = _partials(uploads_dir)
    body = _PART_HEAD + images.png() + b"\r\n--limitsboundary--\r\n"
    reader, writer = await _connect(api)
    writer.write(_upload_head(len(body) + 1000) + body)
    await writer.drain()

    answer, elapsed = await _closed_after(reader, time.monotonic(), limit=limit)
    writer.close()

    assert limit - 0.5 <= elapsed <= limit + SLACK_SECONDS, elapsed
    assert _status(answer) == 408
    await eventually(lambda: _async(_partials(uploads_dir) <= before), timeout=10, what="no temp file left")


async def test_chunked_trailer_fields_are_held_to_the_head_limit(api: Api) -> None:
    """Trailers after the last chunk are kept by the parser like a head: streamed past the head's
    byte limit, the connection is refused (431) and closed, where it used to take 64 MB and more."""
    # A well-begun upload, so the application waits for the rest rather than answering early.
    chunk = _PART_HEAD + images.png()[:100]
    reader, writer = await _connect(api)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=limitsboundary\r\n\r\n"
        b"%x\r\n%s\r\n0\r\nX-Trailer: " % (len(chunk), chunk)
    )
    await writer.drain()
    # The limit counts whole reads once the trailer has begun, so it may act one read (at most
    # 256 KiB in uvicorn) late, and loopback's socket buffers take several MiB the server has not
    # read yet when it is slow (a loaded machine); far past that, the connection must be gone.
    cap = 32 * 1024 * 1024
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < cap and not reader.at_eof() and not writer.transport.is_closing():
            writer.write(b"a" * 4096)
            await writer.drain()
            sent += 4096
    answer = b""
    with contextlib.suppress(ConnectionError):
        answer = await _answer(reader, timeout=10)
    writer.close()

    assert sent < cap, "the trailer was taken without limit"
    if answer:  # the answer may be lost to the reset that closing on unread bytes sends
        assert _status(answer) == 431, answer[:200]
        assert answer.endswith(HEAD_TOO_LARGE.encode())


def _headers(answer: bytes) -> dict[bytes, bytes]:
    """The answer's header fields by lower-case name."""
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, value in (line.split(b":", 1) for line in head)}


async def test_an_answer_before_the_body_is_read_closes_the_connection_and_says_so(api: Api) -> None:
    """Answered before its body was read (here a 404): the connection is closed rather than kept in
    a body nobody reads, where no idle or eviction rule would ever reach it. The answer must say so
    (`Connection: close`, RFC 9112 §9.6), or a client takes it for keep-alive, sends its next request
    on it and finds it dropped unanswered ("Server disconnected without sending a response", seen
    under load from httpx after a 401 to an upload whose body had not all arrived)."""
    reader, writer = await _connect(api)
    writer.write(b"POST /no-such-page HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx")
    await writer.drain()

    answer = await _answer(reader, timeout=api.settings.http_body_idle_timeout_seconds)
    writer.close()

    assert _status(answer) == 404
    assert _headers(answer).get(b"connection") == b"close", answer[:500]


async def test_an_answer_after_the_whole_body_keeps_the_connection(api: Api) -> None:
    """Only an answer begun before its body arrived closes: one after it keeps the connection for the
    next request, as before."""
    reader, writer = await _connect(api)
    writer.write(b"POST /no-such-page HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(_headers(head)[b"content-length"]))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    second = await _answer(reader, timeout=10)
    writer.close()

    assert _status(head) == 404
    assert b"connection" not in _headers(head)
    assert _status(second) == 200


async def test_a_client_that_sends_its_whole_body_before_reading_gets_the_early_answer(api: Api) -> None:
    """Most clients (httpx, requests) send the whole body before reading: answered early (here a 404)
    the server must not reset the connection under them, or the answer is lost to a ReadError."""
    body = b"x" * (2 * 1024 * 1024)
    for _ in range(3):
        reader, writer = await _connect(api)
        writer.write(b"POST /no-such-page HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        answer = await _answer(reader, timeout=10)
        writer.close()

        assert _status(answer) == 404


async def test_a_body_trickling_a_byte_a_second_is_closed_after_the_grace(
    api: Api, uploads_dir: Path
) -> None:
    """Never idle for long, but far below the minimum rate: closed once the grace is used up."""
    sent = _PART_HEAD
    limit = (
        api.settings.http_body_idle_timeout_seconds + len(sent) / api.settings.http_body_min_bytes_per_second
    )
    before = _partials(uploads_dir)
    reader, writer = await _connect(api)
    writer.write(_upload_head(500_000) + sent)
    await writer.drain()
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(1)  # the attack's pace, not a wait for the server
                writer.write(b"a")
                await writer.drain()

    trickling = asyncio.create_task(trickle())
    try:
        answer, elapsed = await _closed_after(reader, started, limit=limit)
    finally:
        trickling.cancel()
        writer.close()

    assert limit - 0.5 <= elapsed <= limit + SLACK_SECONDS, elapsed
    assert _status(answer) == 408
    await eventually(
        lambda: _async(_partials(uploads_dir) <= before), timeout=10, what="the temp file removed"
    )


async def _async(value: bool) -> bool:
    return value


# --- connections and memory ------------------------------------------------------------------------


async def test_health_answers_within_a_second_past_the_connection_cap(api: Api) -> None:
    cap = api.settings.http_max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * cap + 500
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    idle = [await _connect(api) for _ in range(cap + 50)]
    try:
        for _ in range(3):
            started = time.monotonic()
            reader, writer = await _connect(api)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await _answer(reader, timeout=1)
            writer.close()
            assert _status(answer) == 200
            assert time.monotonic() - started < 1
    finally:
        for _, writer in idle:
            writer.close()


async def test_four_64_mb_heads_leave_the_api_memory_bounded(api: Api) -> None:
    before = api.rss_bytes()
    peak = before
    chunk = b"a" * 65536

    async def header_bomb() -> int:
        """Send up to 64 MB of one header; return what the server took before closing."""
        _, writer = await _connect(api)
        sent = 0
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bomb: ")
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        writer.close()
        return sent

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, api.rss_bytes())
            await asyncio.sleep(0.01)

    sampling = asyncio.create_task(sample())
    try:
        sent = await asyncio.wait_for(asyncio.gather(*(header_bomb() for _ in range(4))), timeout=30)
    finally:
        sampling.cancel()

    # The server closed each one early (a socket buffer's worth after the limit), and its memory
    # barely moved (it grew 288 MB before the limits).
    assert all(amount < 16 * 1024 * 1024 for amount in sent), sent
    assert peak - before < 20 * 1024 * 1024, (before, peak)


async def test_past_the_cap_with_every_connection_inside_a_request_a_newcomer_gets_503(
    stack_env: dict[str, str], workdir: Path, uploads_dir: Path
) -> None:
    """Nothing idle to close for it: the newcomer is told to come back, and served once one ends."""
    cap = 10  # the smallest the setting allows, so that ten uploads fill it
    port = free_port()
    process = start_api(
        {**stack_env, "HTTP_MAX_CONNECTIONS": str(cap)}, port, log_file=workdir / "cap-api.log"
    )
    try:
        await asyncio.to_thread(wait_until_ready, f"http://127.0.0.1:{port}", timeout=60, process=process)
        before = _partials(uploads_dir)
        uploads = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
        for _, writer in uploads:
            writer.write(_upload_head(500_000) + _PART_HEAD + b"x")
        await eventually(
            lambda: _async(len(_partials(uploads_dir) - before) >= cap),
            timeout=10,
            what="ten uploads under way",
        )

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await _answer(reader, timeout=2)
        writer.close()
        assert _status(answer) == 503
        assert b"\r\nretry-after: 5\r\n" in answer

        uploads.pop()[1].close()

        async def health_served() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await _answer(reader, timeout=2)
            writer.close()
            return _status(answer) == 200

        await eventually(health_served, timeout=5, what="/health served once an upload ended")
        for _, writer in uploads:
            writer.close()
    finally:
        stop_process(process)
