"""Real HTTP clients against the real API: curl (with --http2 on plain HTTP, so offering h2c), requests,
httpx, Node 20's fetch/FormData (node_upload.mjs) and JDK 17's HttpClient (JavaUpload.java, which
offers h2c by default). Each case checks what issue 17 found broken: extra form fields, file names
in each encoding, a preamble and transport padding, and bodies of requests offering an upgrade.

curl and Java talk to the API through a relay that records what they send, so a test proves the
client really offered `Upgrade: h2c` rather than trusting that it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import requests

from api.form_fields import UNKNOWN_FIELD
from api.routes.tasks import FORM_FIELDS
from tests import images

HERE = Path(__file__).parent
H2C_OFFER = b"upgrade: h2c"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(images.jpeg(64, 48))
    return path


@contextlib.asynccontextmanager
async def recording_relay(api_process: str) -> AsyncIterator[tuple[str, list[bytearray]]]:
    """A TCP relay to the API; yields its URL and, per connection, the bytes the client sent."""
    host, port = api_process.removeprefix("http://").split(":")
    sent: list[bytearray] = []

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray | None
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if record is not None:
                    record += data
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        api_reader, api_writer = await asyncio.open_connection(host, int(port))
        record = bytearray()
        sent.append(record)
        await asyncio.gather(pipe(client_reader, api_writer, record), pipe(api_reader, client_writer, None))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    relay_port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{relay_port}", sent


async def run(*command: str, timeout: float = 60) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]
    return stdout.decode()


def accepted(answer: dict, filename: str, ignored: list[str]) -> None:
    assert answer.get("filename") == filename, answer
    assert answer["ignored_fields"] == ignored
    assert isinstance(answer["task_id"], int)


# --- curl ------------------------------------------------------------------------------------------


async def curl(*args: str) -> tuple[int, dict]:
    out = await run(
        "curl", "-sS", "--max-time", "30", "-H", "Accept: application/json", "-w", "\n%{http_code}", *args
    )
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


async def test_curl_http2_form_upload_keeps_its_body_and_ignores_the_submit_button(
    api_process: str, photo: Path
) -> None:
    async with recording_relay(api_process) as (url, sent):
        status, answer = await curl(
            "--http2", "-F", f"file=@{photo};filename=naïve café.jpg", "-F", "submit=Upload", f"{url}/upload"
        )

    assert H2C_OFFER in bytes(sent[0]).lower(), "curl --http2 offers h2c on plain HTTP"
    assert status == 200, answer
    accepted(answer, "naïve café.jpg", ["submit"])


async def test_curl_http2_chunked_upload_keeps_its_body(api_process: str, photo: Path) -> None:
    async with recording_relay(api_process) as (url, sent):
        status, answer = await curl(
            "--http2", "-H", "Transfer-Encoding: chunked", "-F", f"file=@{photo}", f"{url}/upload"
        )

    head = bytes(sent[0]).lower()
    assert H2C_OFFER in head and b"transfer-encoding: chunked" in head
    assert status == 200, answer
    accepted(answer, "photo.jpg", [])


async def test_curl_http2_raw_body_with_preamble_padding_and_filename_star(
    api_process: str, photo: Path, tmp_path: Path
) -> None:
    body = tmp_path / "body"
    body.write_bytes(
        b"preamble\r\n--curlb \r\n"
        b'Content-Disposition: form-data; name="file"; filename="naive.jpg"; '
        b"filename*=UTF-8''na%C3%AFve.jpg\r\n"
        b"Content-Type: image/jpeg\r\n\r\n" + photo.read_bytes() + b"\r\n--curlb--\t\r\n"
    )
    status, answer = await curl(
        "--http2",
        "-H",
        "Content-Type: multipart/form-data; boundary=curlb",
        "--data-binary",
        f"@{body}",
        f"{api_process}/upload",
    )

    assert status == 200, answer
    accepted(answer, "naïve.jpg", [])


async def test_curl_misspelt_field_is_refused_naming_the_field_meant(api_process: str, photo: Path) -> None:
    status, answer = await curl("-F", f"file=@{photo}", "-F", "output=web", f"{api_process}/upload")

    assert status == 422
    assert answer == {
        "detail": UNKNOWN_FIELD.format(name="output", known="outputs", fields=", ".join(FORM_FIELDS))
    }


# --- requests and httpx ----------------------------------------------------------------------------


async def test_requests_form_with_a_csrf_token_and_a_non_ascii_name(api_process: str, photo: Path) -> None:
    def post() -> requests.Response:
        with photo.open("rb") as handle:
            return requests.post(
                f"{api_process}/upload",
                data={"csrfmiddlewaretoken": "t0k3n", "preset": "thumbnail", "submit": "Upload"},
                files={"file": ("фото.jpg", handle, "image/jpeg")},
                timeout=30,
            )

    response = await asyncio.to_thread(post)

    assert response.status_code == 200, response.text
    accepted(response.json(), "фото.jpg", ["csrfmiddlewaretoken", "submit"])


async def test_requests_misspelt_field_is_refused(api_process: str, photo: Path) -> None:
    response = await asyncio.to_thread(
        requests.post,
        f"{api_process}/upload",
        data={"op": '[{"op": "grayscale"}]'},
        files={"file": ("a.jpg", photo.read_bytes(), "image/jpeg")},
        timeout=30,
    )

    assert response.status_code == 422
    assert "did you mean 'ops'?" in response.json()["detail"]


async def test_httpx_form_with_extra_fields_and_a_non_ascii_name(api_process: str, photo: Path) -> None:
    async with httpx.AsyncClient(base_url=api_process, timeout=30) as client:
        response = await client.post(
            "/upload",
            data={"_token": "abc", "commit": "Upload"},
            files={"file": ("naïve 写真.jpg", photo.read_bytes(), "image/jpeg")},
        )

    assert response.status_code == 200, response.text
    accepted(response.json(), "naïve 写真.jpg", ["_token", "commit"])


# --- Node 20 and JDK 17 ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_node_fetch_and_formdata(api_process: str, photo: Path) -> None:
    out = await run("node", str(HERE / "node_upload.mjs"), api_process, str(photo))

    results = {line["case"]: line for line in map(json.loads, out.splitlines())}
    formdata, misspelt, raw = results["formdata"], results["misspelt"], results["raw"]
    assert formdata["status"] == 200, formdata
    accepted(json.loads(formdata["body"]), "naïve café.jpg", ["csrf_token", "submit"])
    assert misspelt["status"] == 422 and "did you mean 'preset'?" in json.loads(misspelt["body"])["detail"]
    assert raw["status"] == 200, raw
    accepted(json.loads(raw["body"]), "naïve.jpg", [])


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
async def test_java_http_client_offering_h2c(api_process: str, photo: Path) -> None:
    async with recording_relay(api_process) as (url, sent):
        out = await run("java", str(HERE / "JavaUpload.java"), url, str(photo), timeout=120)

    results = {}
    for line in out.splitlines():
        case, status, version, body = line.split("\t", 3)
        results[case] = (int(status), version, json.loads(body))
    assert set(results) == {"rfc2047", "rfc5987", "chunked"}
    assert sum(H2C_OFFER in bytes(record).lower() for record in sent) == 3, "each client offered h2c"
    assert any(b"transfer-encoding: chunked" in bytes(record).lower() for record in sent)
    expected = {"rfc2047": "naïve.jpg", "rfc5987": "naïve.jpg", "chunked": "naïve photo.jpg"}
    for case, filename in expected.items():
        status, version, answer = results[case]
        assert (status, version) == (200, "HTTP_1_1"), (case, answer)
        accepted(answer, filename, ["submit"])
