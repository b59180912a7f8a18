"""Callbacks: a task's final status POSTed to its `callback_url`, signed, retried, never to a
private address unless allowed. The receivers are real HTTP servers on loopback."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from api.callback_urls import (
    BAD_PORT,
    HAS_CREDENTIALS,
    NOT_HTTP,
    PRIVATE,
    UNRESOLVED,
    CallbackRefused,
    vet_callback_url,
)
from api.callbacks import SIGNATURE_HEADER
from api.routes.tasks import CALLBACKS_OFF
from devstack.stack import running_api
from tests import images
from tests.conftest import TEST_SETTINGS
from tests.waiting import eventually

SECRET = TEST_SETTINGS["WEBHOOK_SECRET"]


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server that records every POST and answers from `answers` (then 200)."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append(Received(time.monotonic(), dict(self.headers), body))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), found.handler())
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hook?source=imagequeue"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


def verify(received: Received) -> dict:
    """What a receiver does: recompute the HMAC over `<t>.<body>` and compare in constant time."""
    fields = dict(part.split("=", 1) for part in received.headers[SIGNATURE_HEADER].split(","))
    expected = hmac.new(
        SECRET.encode(), f"{fields['t']}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected), "the signature does not verify"
    assert abs(int(fields["t"]) - time.time()) < 60
    return json.loads(received.body)


async def upload_with_callback(client: httpx.AsyncClient, url: str, content: bytes | None = None) -> int:
    response = await client.post(
        "/upload",
        files={"file": ("hook.jpg", content or images.jpeg(), "image/jpeg")},
        data={"callback_url": url, "preset": "thumbnail"},
    )
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def callback_state(client: httpx.AsyncClient, task_id: int, state: str, timeout: float = 30) -> dict:
    status: dict = {}

    async def reached() -> bool:
        nonlocal status
        status = (await client.get(f"/status/{task_id}")).json()
        return status["callback"]["state"] == state

    await eventually(reached, timeout=timeout, what=f"task {task_id}'s callback {state}")
    return status


async def test_a_finished_task_is_posted_to_its_callback_signed(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, receiver: Receiver
) -> None:
    task_id = await upload_with_callback(client, receiver.url)

    status = await callback_state(client, task_id, "delivered")

    (delivery,) = receiver.received
    body = verify(delivery)
    assert body["task_id"] == task_id and body["status"] == "done"
    assert body["processed_url"] == status["processed_url"]
    assert delivery.headers["X-Imagequeue-Event"] == "task.done"
    assert delivery.headers["X-Imagequeue-Delivery"] == f"{task_id}-1"
    assert delivery.headers["Content-Type"] == "application/json"
    assert status["callback"] == {"url": receiver.url, "state": "delivered", "attempts": 1, "error": None}


async def test_a_failed_task_is_posted_with_its_reason(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, receiver: Receiver
) -> None:
    task_id = await upload_with_callback(client, receiver.url, images.truncated_jpeg())

    await callback_state(client, task_id, "delivered")

    body = verify(receiver.received[0])
    assert body["status"] == "failed" and body["error"]
    assert receiver.received[0].headers["X-Imagequeue-Event"] == "task.failed"


async def test_a_failing_receiver_is_retried_with_growing_delays(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, receiver: Receiver
) -> None:
    receiver.answers = [500, 502]
    task_id = await upload_with_callback(client, receiver.url)

    status = await callback_state(client, task_id, "delivered")

    assert status["callback"]["attempts"] == 3
    first, second, third = (received.at for received in receiver.received)
    # WEBHOOK_RETRY_SECONDS is 0.2 in the tests: 0.2 s before the second try, 0.4 s before the third.
    assert second - first >= 0.2
    assert third - second >= 0.4
    assert {verify(received)["task_id"] for received in receiver.received} == {task_id}
    assert [received.headers["X-Imagequeue-Delivery"] for received in receiver.received] == [
        f"{task_id}-1",
        f"{task_id}-2",
        f"{task_id}-3",
    ]


async def test_a_receiver_that_never_accepts_ends_failed_after_every_try(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, receiver: Receiver
) -> None:
    receiver.answers = [503] * 10
    task_id = await upload_with_callback(client, receiver.url)

    status = await callback_state(client, task_id, "failed")

    assert status["status"] == "done", "a callback that fails does not fail the task"
    assert status["callback"]["attempts"] == int(TEST_SETTINGS["WEBHOOK_MAX_ATTEMPTS"])
    assert status["callback"]["error"] == "the receiver answered 503"
    assert len(receiver.received) == 3


async def test_a_redirect_is_not_followed(
    client: httpx.AsyncClient, worker_process: subprocess.Popen, receiver: Receiver
) -> None:
    receiver.answers = [307] * 10
    task_id = await upload_with_callback(client, receiver.url)

    status = await callback_state(client, task_id, "failed")

    assert status["callback"]["error"] == "the receiver answered 307"
    assert len(receiver.received) == 3


# Also refused as imports by URL (tests/api/test_url_import.py).
PRIVATE_AND_ODD_URLS: list[tuple[str, str]] = [
    ("http://127.0.0.1:9/hook", PRIVATE),
    ("http://localhost/hook", PRIVATE),  # 127.0.0.1 or ::1, neither named
    ("http://10.1.2.3/", PRIVATE),
    ("http://192.168.0.10/", PRIVATE),
    ("http://172.16.5.4/", PRIVATE),
    ("http://169.254.169.254/latest/meta-data/", PRIVATE),
    ("http://100.64.0.1/", PRIVATE),
    ("http://0.0.0.0/", PRIVATE),
    ("http://[::1]/", PRIVATE),
    ("http://[::ffff:127.0.0.1]/", PRIVATE),
    ("http://[fd00::1]/", PRIVATE),
    ("http://224.0.0.1/", PRIVATE),
    # A name that does not resolve: the same words as one pointing inside, or the answer would tell
    # which internal names exist (.invalid never resolves, RFC 6761).
    ("http://no-such-host.invalid/hook", PRIVATE),
    ("ftp://example.com/", NOT_HTTP),
    ("file:///etc/passwd", NOT_HTTP),
    ("gopher://127.0.0.1:6379/", NOT_HTTP),
    ("http://user:secret@93.184.216.34/", HAS_CREDENTIALS),
    ("http://93.184.216.34:99999/", BAD_PORT),
]


@pytest.mark.parametrize(("url", "detail"), PRIVATE_AND_ODD_URLS)
async def test_private_and_odd_callback_urls_are_refused(url: str, detail: str) -> None:
    with pytest.raises(CallbackRefused) as refused:
        await vet_callback_url(url, allow_private=False)
    assert str(refused.value) == detail


async def test_a_name_that_does_not_resolve_is_refused_as_one_that_points_inside() -> None:
    """Two answers would let a client probe which internal names exist; the log tells them apart."""
    answers = []
    for url in ("http://no-such-host.invalid/hook", "http://localhost/hook", "http://10.1.2.3/hook"):
        with pytest.raises(CallbackRefused) as refused:
            await vet_callback_url(url, allow_private=False)
        answers.append(str(refused.value))

    assert answers == [PRIVATE] * 3
    assert "resolve" in PRIVATE and "localhost" not in PRIVATE


async def test_with_private_addresses_allowed_a_name_that_does_not_resolve_says_so() -> None:
    """Allowed to reach inside, a client learns nothing more from being told the name is unknown."""
    with pytest.raises(CallbackRefused) as refused:
        await vet_callback_url("http://no-such-host.invalid/hook", allow_private=True)

    assert str(refused.value) == UNRESOLVED.format(host="no-such-host.invalid")


# IPv6 addresses that carry an IPv4 address, which Python's is_global calls public by their range.
PRIVATE_CARRYING_HOSTS: list[tuple[str, str]] = [
    # NAT64 (RFC 6052): the cloud metadata address through the well-known prefix.
    ("64:ff9b::a9fe:a9fe", PRIVATE),
    ("64:ff9b::10.0.0.1", PRIVATE),
    # The local-use NAT64 prefix (RFC 8215) is refused whatever it carries.
    ("64:ff9b:1::808:808", PRIVATE),
    # IPv4-compatible (::/96, deprecated) and IPv4-mapped.
    ("::127.0.0.1", PRIVATE),
    ("::ffff:192.168.1.1", PRIVATE),
    # 6to4 (2002::/16): the IPv4 address follows the prefix.
    ("2002:7f00:1::", PRIVATE),
    ("2002:a9fe:a9fe::1", PRIVATE),
    # Teredo (2001::/32): server, then the client bit-inverted in the last 32 bits.
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", PRIVATE),
    ("2001:0:a00:1:8000:63bf:f7f7:f7f7", PRIVATE),
]


@pytest.mark.parametrize(("host", "detail"), PRIVATE_CARRYING_HOSTS)
async def test_ipv6_carrying_a_private_ipv4_is_refused(host: str, detail: str) -> None:
    with pytest.raises(CallbackRefused) as refused:
        await vet_callback_url(f"http://[{host}]/hook", allow_private=False)

    assert str(refused.value) == detail


@pytest.mark.parametrize(
    "host",
    [
        "64:ff9b::8.8.8.8",  # NAT64 to a public address
        "::8.8.8.8",  # IPv4-compatible
        "::ffff:8.8.8.8",  # IPv4-mapped
        "2002:808:808::1",  # 6to4
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo: public server, public client 8.8.8.8
        "2606:4700:4700::1111",  # plain public IPv6
    ],
)
async def test_ipv6_carrying_a_public_ipv4_is_accepted(host: str) -> None:
    target = await vet_callback_url(f"http://[{host}]/hook", allow_private=False)

    assert str(target.address) == str(ipaddress.IPv6Address(host))


async def test_a_public_address_is_accepted_and_pinned() -> None:
    target = await vet_callback_url("https://93.184.216.34:8443/hook?x=1", allow_private=False)

    assert str(target.pinned_url()) == "https://93.184.216.34:8443/hook?x=1"
    assert target.host == "93.184.216.34"


@pytest.fixture(scope="module")
def strict_api(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """A second API with the defaults on callbacks: private addresses refused."""
    env = {**stack_env, "WEBHOOK_ALLOW_PRIVATE": "false"}
    with running_api(env, log_file=workdir / "strict-api.log") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api_without_callbacks(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    env = {**stack_env, "WEBHOOK_SECRET": ""}
    with running_api(env, log_file=workdir / "no-callbacks-api.log") as base_url:
        yield base_url


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://127.0.0.1:8000/admin", PRIVATE),
        ("http://169.254.169.254/", PRIVATE),
        (
            "http://[64:ff9b::a9fe:a9fe]/",
            PRIVATE,
        ),
        ("http://[::127.0.0.1]:8000/", PRIVATE),
        ("http://[2002:7f00:1::]/", PRIVATE),
        ("javascript:alert(1)", NOT_HTTP),
    ],
)
async def test_the_api_refuses_a_private_callback_at_upload(
    strict_api: str, uploads_dir: Path, url: str, detail: str
) -> None:
    before = set(uploads_dir.iterdir())
    async with httpx.AsyncClient(base_url=strict_api) as http:
        response = await http.post(
            "/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")}, data={"callback_url": url}
        )

    assert response.status_code == 422
    assert response.json() == {"detail": detail}
    assert set(uploads_dir.iterdir()) == before


async def test_callbacks_are_refused_when_the_server_has_no_secret(api_without_callbacks: str) -> None:
    async with httpx.AsyncClient(base_url=api_without_callbacks) as http:
        response = await http.post(
            "/upload",
            files={"file": ("a.jpg", images.jpeg(), "image/jpeg")},
            data={"callback_url": "https://93.184.216.34/hook"},
        )

    assert response.status_code == 422
    assert response.json() == {"detail": CALLBACKS_OFF}


async def test_status_without_a_callback_says_null(client: httpx.AsyncClient) -> None:
    created = await client.post("/upload", files={"file": ("a.jpg", images.jpeg(), "image/jpeg")})

    body = (await client.get(f"/status/{created.json()['task_id']}")).json()

    assert body["callback"] is None
