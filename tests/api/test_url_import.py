"""Import by URL: `POST /upload` with a `url` field, fetched by the API from a real HTTP server on
loopback (URL_IMPORT_ALLOW_PRIVATE on), and every SSRF target the callback tests refuse refused
by an API with the default (public addresses only)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from api.uploads import EMPTY_FILE, FILE_AND_URL, TOO_LARGE, URL_IMPORT_OFF
from api.url_import import (
    CONNECT_FAILED,
    IMPORT_URL,
    MAX_REDIRECTS,
    NOT_HTTP,
    REDIRECT_WITHOUT_LOCATION,
    REMOTE_FAILED,
    REMOTE_STATUS,
    REMOTE_TIMEOUT,
    TOO_MANY_REDIRECTS,
)
from core.formats import UNSUPPORTED_MESSAGE
from devstack.stack import running_api
from tests import images
from tests.api.test_callbacks import PRIVATE_AND_ODD_URLS, PRIVATE_CARRYING_HOSTS
from tests.client.test_client import run_client
from tests.conftest import TEST_SETTINGS
from tests.waiting import eventually, final_status

LIMIT = int(TEST_SETTINGS["MAX_UPLOAD_BYTES"])
TIMEOUT_SECONDS = 2
PHOTO = images.jpeg(320, 240)
HUGE = images.png_claiming(20_000, 20_000)  # 400 MP declared, over MAX_IMAGE_PIXELS
HOSTILE_STATUS_LINE = b"<script>alert(1)</script> from 10.20.30.40 db.internal:5432"


@dataclass
class ImageServer:
    """Answers each path the way a remote server of some kind would; records the Host it was asked."""

    base: str = ""
    hosts: list[str] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.hosts.append(self.headers.get("Host", ""))
                    server.requests += 1
                parts = urlsplit(self.path)
                # The API stops reading too big or too slow a body: what those cases expect.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(parts.path, parse_qs(parts.query))

            def _answer(self, path: str, query: dict[str, list[str]]) -> None:
                if path.startswith("/photos/"):
                    self._body(PHOTO, "image/jpeg")
                elif path == "/huge.png":
                    self._body(HUGE, "image/png")
                elif path == "/text":
                    self._body(b"<html>not an image</html>", "text/html")
                elif path == "/empty":
                    self._body(b"", "image/jpeg")
                elif path == "/missing":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/big-declared":
                    self.send_response(200)
                    self.send_header("Content-Length", str(LIMIT + 1))
                    self.end_headers()
                    self.wfile.write(PHOTO)
                elif path == "/big-undeclared":
                    # No Content-Length: the body ends when the connection closes (HTTP/1.0).
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(LIMIT // 65536 + 2):
                        self.wfile.write(bytes(65536))
                elif path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PHOTO)))
                    self.end_headers()
                    for offset in range(0, len(PHOTO), 100):
                        self.wfile.write(PHOTO[offset : offset + 100])
                        self.wfile.flush()
                        time.sleep(0.2)  # the remote's pace, not the test's synchronisation
                elif path == "/loop":
                    self._redirect("/loop")
                elif path.startswith("/hops/"):
                    left = int(path.rsplit("/", 1)[1])  # redirects still to give
                    self._redirect(f"/hops/{left - 1}" if left > 1 else "/photos/after-hops.jpg")
                elif path == "/redirect":
                    self._redirect(query["to"][0])
                elif path == "/not-http":
                    # What a hostile or broken server might send: markup and an internal address.
                    self.wfile.write(HOSTILE_STATUS_LINE + b"\r\n\r\n")
                    self.close_connection = True
                elif path == "/cut-short":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(PHOTO)))
                    self.end_headers()
                    self.wfile.write(PHOTO[:100])
                    self.close_connection = True
                elif path == "/no-location":
                    self.send_response(302)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_error(404)

            def _body(self, data: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def remote() -> Iterator[ImageServer]:
    found = ImageServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), found.handler())
    server.daemon_threads = True
    found.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def import_api(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """An API importing by URL from loopback (the test's server), with a short fetch limit."""
    env = {
        **stack_env,
        "URL_IMPORT": "true",
        "URL_IMPORT_ALLOW_PRIVATE": "true",
        "URL_IMPORT_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
    }
    with running_api(env, log_file=workdir / "import-api.log") as base_url:
        yield base_url


@pytest.fixture(scope="module")
def public_only_api(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    """An API importing by URL with the default: public addresses only."""
    env = {**stack_env, "URL_IMPORT": "true"}
    with running_api(env, log_file=workdir / "public-import-api.log") as base_url:
        yield base_url


async def import_url(base_url: str, url: str, **fields: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        return await http.post("/upload", files=[("url", (None, url))], data=fields)


def as_import_refusal(callback_detail: str) -> str:
    """The callback test's expected words, as the import by URL says them."""
    return callback_detail.replace("`callback_url`", "`url`").replace(
        "callbacks go to public addresses only", "images are imported from public addresses only"
    )


async def test_an_imported_image_is_processed_like_an_upload(
    import_api: str, remote: ImageServer, worker_process: subprocess.Popen
) -> None:
    response = await import_url(import_api, f"{remote.base}/photos/sunset%20view.jpg", preset="thumbnail")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "sunset view.jpg"
    async with httpx.AsyncClient(base_url=import_api, timeout=30) as http:
        status = await final_status(http, body["task_id"])
        assert status["status"] == "done", status
        original = await http.get(f"/tasks/{body['task_id']}/original")
    assert original.content == PHOTO
    # Connected to the vetted address, asking for the URL's own host.
    assert remote.hosts[-1] == remote.base.removeprefix("http://")


async def test_the_same_idempotency_key_answers_the_first_task(import_api: str, remote: ImageServer) -> None:
    url = f"{remote.base}/photos/keyed.jpg"
    async with httpx.AsyncClient(base_url=import_api, timeout=30) as http:
        headers = {"Idempotency-Key": f"import-{time.time_ns()}"}
        first = await http.post("/upload", files=[("url", (None, url))], headers=headers)
        again = await http.post("/upload", files=[("url", (None, url))], headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.json()["task_id"] == first.json()["task_id"]
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_five_redirects_are_followed(import_api: str, remote: ImageServer) -> None:
    response = await import_url(import_api, f"{remote.base}/hops/{MAX_REDIRECTS}")

    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "after-hops.jpg"


@pytest.mark.parametrize("path", [f"/hops/{MAX_REDIRECTS + 1}", "/loop"])
async def test_too_many_redirects_are_refused(import_api: str, remote: ImageServer, path: str) -> None:
    before = remote.requests
    response = await import_url(import_api, remote.base + path)

    assert response.status_code == 422
    assert response.json() == {"detail": TOO_MANY_REDIRECTS}
    assert remote.requests - before == MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    ("to", "detail"),
    [
        ("file:///etc/passwd", IMPORT_URL.not_http),
        ("gopher://127.0.0.1:6379/", IMPORT_URL.not_http),
        ("http://user:secret@127.0.0.1/", IMPORT_URL.has_credentials),
        ("http://127.0.0.1:99999/", IMPORT_URL.bad_port),
    ],
)
async def test_a_redirect_is_vetted_again(import_api: str, remote: ImageServer, to: str, detail: str) -> None:
    response = await import_url(import_api, f"{remote.base}/redirect?to={to}")

    assert response.status_code == 422
    assert response.json() == {"detail": detail}


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/big-declared", 413, TOO_LARGE.format(limit=LIMIT)),
        ("/big-undeclared", 413, TOO_LARGE.format(limit=LIMIT)),
        ("/slow", 504, REMOTE_TIMEOUT.format(seconds=TIMEOUT_SECONDS)),
        ("/missing", 502, REMOTE_STATUS.format(status=404)),
        ("/no-location", 502, REDIRECT_WITHOUT_LOCATION.format(status=302)),
        ("/text", 415, UNSUPPORTED_MESSAGE),
        ("/empty", 400, EMPTY_FILE),
    ],
)
async def test_a_fetch_that_cannot_give_an_image_is_refused_at_once(
    import_api: str, remote: ImageServer, uploads_dir: Path, path: str, status: int, detail: str
) -> None:
    before = set(uploads_dir.iterdir())
    started = time.monotonic()

    response = await import_url(import_api, remote.base + path)

    assert response.status_code == status, response.text
    assert response.json() == {"detail": detail}
    assert time.monotonic() - started < TIMEOUT_SECONDS + 5
    assert set(uploads_dir.iterdir()) == before


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("target", "reason"),
    [("/not-http", NOT_HTTP), ("/cut-short", NOT_HTTP), (None, CONNECT_FAILED)],
)
async def test_a_remote_failure_is_502_in_our_words_never_quoting_the_remote_side(
    import_api: str, remote: ImageServer, uploads_dir: Path, target: str | None, reason: str
) -> None:
    """The cause's category stays; what the remote side sent (markup, addresses) and the address
    connected to are not reflected."""
    url = remote.base + target if target else f"http://127.0.0.1:{closed_port()}/a.jpg"
    before = set(uploads_dir.iterdir())

    response = await import_url(import_api, url)
    page = await import_url_as_browser(import_api, url)

    assert (response.status_code, response.json()) == (502, {"detail": REMOTE_FAILED.format(reason=reason)})
    assert page.status_code == 502 and escape(REMOTE_FAILED.format(reason=reason)) in page.text
    for answer in (response, page):
        for leaked in ("script", "10.20.30.40", "db.internal", "127.0.0.1", "Error"):
            assert leaked not in answer.text.replace("/static/", ""), leaked
    assert set(uploads_dir.iterdir()) == before


async def import_url_as_browser(base_url: str, url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        return await http.post("/upload", files=[("url", (None, url))], headers={"Accept": "text/html"})


async def test_too_many_pixels_are_refused_as_for_an_upload(
    import_api: str, remote: ImageServer, client: httpx.AsyncClient
) -> None:
    imported = await import_url(import_api, f"{remote.base}/huge.png")
    uploaded = await client.post("/upload", files={"file": ("huge.png", HUGE, "image/png")})

    assert imported.status_code == uploaded.status_code == 422
    assert imported.json() == uploaded.json()


async def test_a_file_and_a_url_together_are_refused(import_api: str, remote: ImageServer) -> None:
    async with httpx.AsyncClient(base_url=import_api, timeout=30) as http:
        response = await http.post(
            "/upload",
            files={"file": ("a.jpg", PHOTO, "image/jpeg")},
            data={"url": f"{remote.base}/photos/a.jpg"},
        )

    assert response.status_code == 422
    assert response.json() == {"detail": FILE_AND_URL}


async def test_import_by_url_is_off_by_default(client: httpx.AsyncClient, remote: ImageServer) -> None:
    before = remote.requests
    response = await client.post("/upload", files=[("url", (None, f"{remote.base}/photos/a.jpg"))])

    assert response.status_code == 422
    assert response.json() == {"detail": URL_IMPORT_OFF}
    assert remote.requests == before


async def test_off_a_url_beside_a_file_is_an_ignored_field_as_before(
    client: httpx.AsyncClient, remote: ImageServer
) -> None:
    before = remote.requests
    response = await client.post(
        "/upload", files={"file": ("a.jpg", PHOTO, "image/jpeg")}, data={"url": f"{remote.base}/photos/b.jpg"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["ignored_fields"] == ["url"]
    assert remote.requests == before


@pytest.mark.parametrize(("url", "detail"), PRIVATE_AND_ODD_URLS)
async def test_every_ssrf_target_of_the_callback_tests_is_refused(
    public_only_api: str, url: str, detail: str
) -> None:
    response = await import_url(public_only_api, url)

    assert response.status_code == 422
    assert response.json() == {"detail": as_import_refusal(detail)}


@pytest.mark.parametrize(("host", "detail"), PRIVATE_CARRYING_HOSTS)
async def test_ipv6_carrying_a_private_ipv4_is_refused(public_only_api: str, host: str, detail: str) -> None:
    response = await import_url(public_only_api, f"http://[{host}]/photo.jpg")

    assert response.status_code == 422
    assert response.json() == {"detail": as_import_refusal(detail)}


async def test_the_test_server_itself_is_refused_by_default(
    public_only_api: str, remote: ImageServer
) -> None:
    before = remote.requests
    response = await import_url(public_only_api, f"{remote.base}/photos/a.jpg")

    assert response.status_code == 422
    assert response.json() == {"detail": IMPORT_URL.private}
    assert remote.requests == before


async def test_a_refusal_never_names_the_address_a_host_resolved_to(
    public_only_api: str, workdir: Path
) -> None:
    """What a name resolves to inside the network is not the client's to learn (SSRF
    reconnaissance): the answer says the address is not public; the log names it for the operator."""
    log_file = workdir / "public-import-api.log"
    response = await import_url(public_only_api, "http://localhost:9/photo.jpg")

    assert (response.status_code, response.json()) == (422, {"detail": IMPORT_URL.private})
    assert "127.0.0.1" not in response.text and "::1" not in response.text

    async def logged() -> bool:
        return "refused a URL: 'localhost' resolves to" in log_file.read_text()

    await eventually(logged, timeout=10, what="the API logging the address it refused")


async def test_a_name_that_does_not_resolve_is_answered_as_one_that_points_inside(
    public_only_api: str, workdir: Path
) -> None:
    """Were the answers different, a client could learn which internal names exist (SSRF
    reconnaissance); the log tells the two apart for the operator."""
    log_file = workdir / "public-import-api.log"
    unknown = await import_url(public_only_api, "http://no-such-host.invalid/photo.jpg")
    inside = await import_url(public_only_api, "http://localhost:9/photo.jpg")

    assert (unknown.status_code, unknown.json()) == (inside.status_code, inside.json())
    assert (unknown.status_code, unknown.json()) == (422, {"detail": IMPORT_URL.private})

    async def logged() -> bool:
        return "refused a URL: 'no-such-host.invalid' does not resolve" in log_file.read_text()

    await eventually(logged, timeout=10, what="the API logging the name that did not resolve")


def test_the_cli_imports_a_url_and_follows_it_to_done(
    import_api: str, remote: ImageServer, worker_process: subprocess.Popen
) -> None:
    url = f"{remote.base}/photos/from-cli.jpg"
    ran = run_client("upload", url, "--wait", "--json", url=import_api)

    assert ran.returncode == 0, ran.stderr
    [result] = json.loads(ran.stdout)
    assert result["file"] == url
    assert result["status"] == "done", result
    assert f"uploaded {url} as task {result['task_id']}" in ran.stderr


def test_the_cli_says_why_a_url_was_refused(import_api: str, remote: ImageServer) -> None:
    ran = run_client("upload", f"{remote.base}/missing", "--json", url=import_api)

    assert ran.returncode != 0
    [result] = json.loads(ran.stdout)
    assert result["status"] == "refused"
    assert result["error"] == REMOTE_STATUS.format(status=404)
