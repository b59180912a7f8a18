"""Per-key limits on the real API: API_KEYS tables with uploads_per_minute and max_pending, answered
with 429 (403 for a limit of 0), Retry-After, and the IETF draft's RateLimit-Policy and RateLimit
fields; decided in PostgreSQL, so that two API processes share one limit."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.intake import IDEMPOTENCY_KEY_REUSED, PRIORITY_ABOVE_CAP
from api.key_limits import (
    MAX_PENDING_REACHED,
    PENDING_RETRY_SECONDS,
    UPLOADS_FORBIDDEN,
    UPLOADS_PER_MINUTE_REACHED,
)
from core.api_keys import fingerprint
from core.models import ImageTask
from devstack.servers import free_port
from devstack.stack import running_api, start_api, stop_process
from tests import images

KEYS = {
    "plain": "plain-key-0123456789",
    "table": {"key": "table-key-0123456789", "priority": "bulk"},
    "two": {"key": "two-a-minute-0123456789", "uploads_per_minute": 2},
    "thirty": {"key": "thirty-a-minute-0123456789", "uploads_per_minute": 30},
    "one": {"key": "one-a-minute-0123456789", "uploads_per_minute": 1},
    "pending": {"key": "two-pending-0123456789", "max_pending": 2},
    "both": {"key": "both-limits-0123456789", "uploads_per_minute": 60, "max_pending": 1},
    "zero": {"key": "zero-a-minute-0123456789", "uploads_per_minute": 0},
    "zero-pending": {"key": "zero-pending-0123456789", "max_pending": 0},
    "shared": {"key": "shared-by-two-apis-0123456789", "uploads_per_minute": 4},
    "resumable": {"key": "one-resumable-a-minute-0123456789", "uploads_per_minute": 1},
    "tus-checks": {"key": "tus-checks-three-a-minute-0123456789", "uploads_per_minute": 3},
    "form-checks": {"key": "form-checks-one-a-minute-0123456789", "uploads_per_minute": 1},
    "capped": {"key": "capped-at-normal-0123456789", "max_priority": "normal"},
    "replay": {"key": "replay-one-a-minute-0123456789", "uploads_per_minute": 1},
    "tus-replay": {"key": "tus-replay-one-a-minute-0123456789", "uploads_per_minute": 1},
    "deleted-replay": {"key": "deleted-replay-one-a-minute-0123456789", "uploads_per_minute": 1},
    "tus-lost": {"key": "tus-lost-201-one-a-minute-0123456789", "uploads_per_minute": 1},
    "tus-lost-race": {"key": "tus-lost-201-race-one-a-minute-0123456789", "uploads_per_minute": 1},
}
# Few, so that the open-upload refusal is reached in a test.
TUS_MAX_OPEN_UPLOADS = 2
# As an operator would set it in the environment: a JSON list.
API_KEYS = json.dumps(list(KEYS.values()))


def key(name: str) -> dict[str, str]:
    entry = KEYS[name]
    return {"X-API-Key": entry if isinstance(entry, str) else entry["key"]}


@pytest.fixture(scope="module")
def limited_api(stack_env: dict[str, str], workdir: Path) -> Iterator[str]:
    env = {**stack_env, "API_KEYS": API_KEYS, "TUS_MAX_OPEN_UPLOADS": str(TUS_MAX_OPEN_UPLOADS)}
    with running_api(env, log_file=workdir / "limited-api.log") as url:
        yield url


@pytest.fixture
async def limited(limited_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=limited_api, timeout=30) as http:
        yield http


async def upload(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await client.post(
        "/upload", files={"file": ("k.jpg", images.jpeg(), "image/jpeg")}, headers=headers
    )


def window(field: str, policy: str) -> int:
    """The `t` of one policy's item in a RateLimit field."""
    found = re.search(rf'"{policy}";r=\d+;t=(\d+)', field)
    assert found, field
    return int(found.group(1))


async def test_a_rate_limited_upload_carries_the_headers_and_the_one_over_is_429(
    limited: httpx.AsyncClient,
) -> None:
    first = await upload(limited, key("two"))
    second = await upload(limited, key("two"))
    third = await upload(limited, key("two"))

    assert first.status_code == second.status_code == 200
    for response in (first, second, third):
        assert response.headers["ratelimit-policy"] == '"minute";q=2;w=60'
    # A whole minute's quota at once, then one upload each 30 s: the second accrues in 30 s.
    assert first.headers["ratelimit"] == '"minute";r=1;t=30'
    assert re.fullmatch(r'"minute";r=0;t=(29|30)', second.headers["ratelimit"])

    assert third.status_code == 429
    retry_after = int(third.headers["retry-after"])
    assert 28 <= retry_after <= 30
    assert third.json() == {"detail": UPLOADS_PER_MINUTE_REACHED.format(limit=2, seconds=retry_after)}
    assert third.json() == {
        "detail": f"This API key has used its 2 uploads a minute; the next is accepted in {retry_after} s."
    }
    # Retry-After is never earlier than the end of the effective window (the draft's rule).
    assert re.fullmatch(r'"minute";r=0;t=\d+', third.headers["ratelimit"])
    assert retry_after - 1 <= window(third.headers["ratelimit"], "minute") <= retry_after


async def test_waiting_retry_after_is_enough_and_not_much_more_than_needed(
    limited: httpx.AsyncClient,
) -> None:
    # 30 a minute: one each 2 s once the burst is used.
    deadline = time.monotonic() + 60
    while (refused := await upload(limited, key("thirty"))).status_code == 200:
        assert time.monotonic() < deadline, "the burst never ran out"
    assert refused.status_code == 429
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2

    # Another try at once is still refused, told to wait no longer than before.
    again = await upload(limited, key("thirty"))
    assert again.status_code == 429 and int(again.headers["retry-after"]) <= retry_after

    # The wait under test is the server's own promise: a client sleeping Retry-After is admitted.
    await asyncio.sleep(int(again.headers["retry-after"]))
    admitted = await upload(limited, key("thirty"))
    assert admitted.status_code == 200, admitted.text
    assert re.fullmatch(r'"minute";r=0;t=[0-2]', admitted.headers["ratelimit"])


async def test_max_pending_counts_the_keys_unfinished_tasks(
    limited: httpx.AsyncClient, db: AsyncSession
) -> None:
    # No worker runs here: uploaded tasks stay pending.
    first = await upload(limited, key("pending"))
    second = await upload(limited, key("pending"))
    third = await upload(limited, key("pending"))

    assert first.status_code == second.status_code == 200
    assert first.headers["ratelimit-policy"] == '"pending";q=2;qu="concurrent-requests"'
    assert (first.headers["ratelimit"], second.headers["ratelimit"]) == ('"pending";r=1', '"pending";r=0')
    assert third.status_code == 429
    assert third.json() == {"detail": MAX_PENDING_REACHED.format(limit=2)}
    assert third.json() == {
        "detail": "This API key already has 2 images waiting or in processing, its most (max_pending); "
        "upload more once some are done."
    }
    assert third.headers["retry-after"] == str(PENDING_RETRY_SECONDS)
    assert third.headers["ratelimit"] == '"pending";r=0'

    # One of them finishes: the key may upload one more.
    await db.execute(update(ImageTask).where(ImageTask.id == first.json()["task_id"]).values(status="done"))
    await db.commit()
    fourth = await upload(limited, key("pending"))
    assert fourth.status_code == 200 and fourth.headers["ratelimit"] == '"pending";r=0'


async def test_both_limits_are_listed_and_a_pending_refusal_leaves_the_minute_untouched(
    limited: httpx.AsyncClient,
) -> None:
    first = await upload(limited, key("both"))
    refused = await upload(limited, key("both"))

    policies = '"minute";q=60;w=60, "pending";q=1;qu="concurrent-requests"'
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == refused.headers["ratelimit-policy"] == policies
    assert first.headers["ratelimit"] == '"minute";r=59;t=1, "pending";r=0'
    assert refused.status_code == 429
    assert refused.json() == {"detail": MAX_PENDING_REACHED.format(limit=1)}
    assert re.fullmatch(r'"minute";r=59;t=[01], "pending";r=0', refused.headers["ratelimit"])


@pytest.mark.parametrize("name", ["plain", "table"])
async def test_keys_without_limits_upload_as_before_without_the_headers(
    limited: httpx.AsyncClient, db: AsyncSession, name: str
) -> None:
    for _ in range(5):
        response = await upload(limited, key(name))
        assert response.status_code == 200
        assert "ratelimit" not in response.headers and "ratelimit-policy" not in response.headers
    rows = await db.execute(
        text("SELECT count(*) FROM api_key_rates WHERE owner = :owner"),
        {"owner": fingerprint(key(name)["X-API-Key"])},
    )
    assert rows.scalar_one() == 0, "a key without limits costs no statement"


@pytest.mark.parametrize(
    ("name", "setting", "policy", "limit"),
    [
        ("zero", "uploads_per_minute", '"minute";q=0;w=60', '"minute";r=0'),
        ("zero-pending", "max_pending", '"pending";q=0;qu="concurrent-requests"', '"pending";r=0'),
    ],
)
async def test_a_limit_of_zero_forbids_uploads_but_not_reading(
    limited: httpx.AsyncClient, name: str, setting: str, policy: str, limit: str
) -> None:
    refused = await upload(limited, key(name))

    assert refused.status_code == 403
    assert refused.json() == {"detail": UPLOADS_FORBIDDEN.format(setting=setting)}
    assert refused.json() == {"detail": f"This API key may not upload images (its {setting} is 0)."}
    assert "retry-after" not in refused.headers, "waiting would not help"
    assert (refused.headers["ratelimit-policy"], refused.headers["ratelimit"]) == (policy, limit)
    assert (await limited.get("/tasks", headers=key(name))).status_code == 200


async def _status_line_of_declared_upload(base_url: str, api_key: str, length: int) -> bytes:
    """The status line the API answers to an upload's headers alone (`Expect: 100-continue`, a
    declared `length`, no body sent): what it decides before reading a byte of the body."""
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            + f"X-API-Key: {api_key}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.readline()
    finally:
        writer.close()


@pytest.mark.parametrize(("name", "status"), [("one", b"429"), ("zero", b"403")])
async def test_a_key_over_its_limit_is_refused_before_its_body_is_read(
    limited_api: str, limited: httpx.AsyncClient, name: str, status: bytes
) -> None:
    """Asked `Expect: 100-continue` for a 0.9 MB body (within MAX_UPLOAD_BYTES: one over it is a 413
    before the key is counted), the refusal comes at once: no `100 Continue`, so the client never
    sends the body (and a client that sends it anyway is not read)."""
    if name == "one":
        assert (await upload(limited, key(name))).status_code == 200
    status_line = await _status_line_of_declared_upload(limited_api, key(name)["X-API-Key"], 900_000)

    assert status_line.startswith(b"HTTP/1.1 " + status), status_line


async def test_two_api_processes_share_one_limit(
    stack_env: dict[str, str], workdir: Path, limited_api: str
) -> None:
    env = {**stack_env, "API_KEYS": API_KEYS}
    with running_api(env, log_file=workdir / "limited-api-2.log") as second_api:
        async with (
            httpx.AsyncClient(base_url=limited_api, timeout=30) as one,
            httpx.AsyncClient(base_url=second_api, timeout=30) as two,
        ):
            answers = [await upload(client, key("shared")) for client in (one, two) * 3]

    # 4 a minute between them, whichever process each upload reached.
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429, 429]
    assert [answer.headers["ratelimit"].split(";t=")[0] for answer in answers[:4]] == [
        f'"minute";r={left}' for left in (3, 2, 1, 0)
    ]


@pytest.mark.parametrize(
    ("api_keys", "message"),
    [
        (
            '[{"key": "a-secret-key-0123456789", "uploads_per_minute": "sixty"}]',
            "invalid setting: API_KEYS entry 1: `uploads_per_minute` must be a whole number from 0 to "
            "1000000, got 'sixty'",
        ),
        (
            '["fine-key-0123456789", {"key": "a-secret-key-0123456789", "max_pendng": 5}]',
            "invalid setting: API_KEYS entry 2: unknown field `max_pendng` (the fields are key, "
            "uploads_per_minute, max_pending, priority, max_priority)",
        ),
    ],
)
async def test_a_bad_key_entry_stops_the_api_saying_why_without_the_key(
    stack_env: dict[str, str], tmp_path: Path, api_keys: str, message: str
) -> None:
    log_file = tmp_path / "api.log"
    process = start_api({**stack_env, "API_KEYS": api_keys}, free_port(), log_file=log_file)
    try:
        exit_code = await asyncio.to_thread(process.wait, 60)
    finally:
        stop_process(process)

    logged = log_file.read_text()
    assert exit_code != 0
    assert message in logged
    assert "a-secret-key" not in logged and "fine-key" not in logged


async def test_a_resumable_upload_counts_against_the_key_once_at_creation(limited: httpx.AsyncClient) -> None:
    tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "100"}
    created = await limited.post("/files/", headers={**key("resumable"), **tus})
    assert created.status_code == 201
    assert created.headers["ratelimit-policy"] == '"minute";q=1;w=60'

    # The minute's one upload is used: neither a second tus upload nor a form post gets in.
    second = await limited.post("/files/", headers={**key("resumable"), **tus})
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert second.headers["tus-resumable"] == "1.0.0", "tus asks it of every answer, refusals too"
    assert second.headers["ratelimit"].startswith('"minute";r=0')
    assert (await upload(limited, key("resumable"))).status_code == 429


async def test_an_idempotent_replay_is_not_counted_against_the_minute(limited: httpx.AsyncClient) -> None:
    """A client retrying an upload whose answer it lost gets its task, not a 429: the replay makes
    nothing. The key reused for another file is still the 422 that says so, not a 429."""
    photo = images.jpeg(64, 48)
    replay = {**key("replay"), "Idempotency-Key": "lost-answer-1"}

    async def send(data: bytes, headers: dict[str, str]) -> httpx.Response:
        return await limited.post("/upload", files={"file": ("r.jpg", data, "image/jpeg")}, headers=headers)

    first = await send(photo, replay)
    retried = [await send(photo, replay) for _ in range(3)]
    other_file = await send(images.jpeg(65, 48), replay)
    new_upload = await send(photo, key("replay"))

    assert first.status_code == 200 and first.headers["ratelimit"].startswith('"minute";r=0')
    for answer in retried:
        assert answer.status_code == 200, answer.text
        assert answer.headers["idempotent-replayed"] == "true"
        assert answer.json()["task_id"] == first.json()["task_id"]
    assert other_file.status_code == 422 and other_file.json()["detail"] == IDEMPOTENCY_KEY_REUSED
    assert new_upload.status_code == 429, "the minute's one upload was the first, and only it"


async def test_an_upload_that_looked_like_a_replay_is_counted_once_it_makes_a_task(
    limited: httpx.AsyncClient,
) -> None:
    """The quota cannot be dodged by deleting the task that holds the key while the next upload's
    body is on its way: that upload was not counted when it started (a replay, it seemed), and is
    counted, here refused, when it would make a task."""
    photo = images.jpeg(67, 48)
    headers = {**key("deleted-replay"), "Idempotency-Key": "dodge-1"}
    first = await limited.post("/upload", files={"file": ("d.jpg", photo, "image/jpeg")}, headers=headers)
    assert first.status_code == 200, first.text
    encoded = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="d.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--b0undary--\r\n"
    )
    content_type = "multipart/form-data; boundary=b0undary"
    headers_sent = asyncio.Event()
    deleted = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield encoded[:100]
        headers_sent.set()
        await deleted.wait()
        yield encoded[100:]

    second = asyncio.create_task(
        limited.post("/upload", content=slow_body(), headers={**headers, "Content-Type": content_type})
    )
    await headers_sent.wait()
    # The headers are out; the server admits on them before it reads the body. There is no event
    # to wait for on its side: if the delete came first, the upload is counted at its start and
    # refused all the same, so the wait only decides whether the late count is what is tested.
    await asyncio.sleep(0.5)
    gone = await limited.delete(f"/tasks/{first.json()['task_id']}", headers=key("deleted-replay"))
    assert gone.status_code == 204, gone.text
    deleted.set()
    answer = await second

    assert answer.status_code == 429, answer.text
    assert "uploads a minute" in answer.json()["detail"], answer.text


async def test_a_new_tus_creation_is_counted_even_with_a_key_a_task_holds(limited: httpx.AsyncClient) -> None:
    """What completes a tus upload may no longer find the task holding its key (deleted meanwhile),
    so a creation is always counted; a client that lost an answer resumes its upload instead."""
    photo = images.jpeg(66, 48)
    headers = {
        **key("tus-replay"),
        "Tus-Resumable": "1.0.0",
        "Upload-Length": str(len(photo)),
        "Idempotency-Key": "lost-answer-2",
    }
    patch = {**key("tus-replay"), "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
    created = await limited.post("/files/", headers=headers)
    assert created.status_code == 201, created.text
    finished = await limited.patch(
        created.headers["location"], content=photo, headers={**patch, "Upload-Offset": "0"}
    )
    assert finished.status_code == 204, finished.text

    again = await limited.post("/files/", headers=headers)
    assert again.status_code == 429, "the minute's one upload was the first creation"


async def test_a_tus_creation_repeated_after_its_lost_201_is_the_same_upload_counted_once(
    limited: httpx.AsyncClient,
) -> None:
    """A client that lost its creation's 201 never had the Location, so it repeats the POST: with
    its Idempotency-Key (and the same length and metadata) it gets the upload it made, not counted
    again. Once a byte of it has arrived, its Location was known: a POST is a new upload again."""
    photo = images.jpeg(67, 48)
    metadata = f"filename {base64.b64encode(b'lost.jpg').decode()}"
    headers = {
        **key("tus-lost"),
        "Tus-Resumable": "1.0.0",
        "Upload-Length": str(len(photo)),
        "Upload-Metadata": metadata,
        "Idempotency-Key": "lost-201-1",
    }
    patch = {**key("tus-lost"), "Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}

    created = await limited.post("/files/", headers=headers)
    repeated = await limited.post("/files/", headers=headers)

    assert (created.status_code, repeated.status_code) == (201, 201), (created.text, repeated.text)
    assert repeated.headers["location"] == created.headers["location"]
    assert (repeated.headers["upload-offset"], repeated.headers["upload-expires"]) == (
        "0",
        created.headers["upload-expires"],
    )
    assert "ratelimit" in created.headers and "ratelimit" not in repeated.headers, "counted once"
    other_length = await limited.post("/files/", headers={**headers, "Upload-Length": str(len(photo) + 1)})
    assert other_length.status_code == 429, "another upload under the key: the minute's one is used"

    location = created.headers["location"]
    started = await limited.patch(location, content=photo[:100], headers={**patch, "Upload-Offset": "0"})
    assert started.status_code == 204, started.text
    after_a_byte = await limited.post("/files/", headers=headers)
    assert after_a_byte.status_code == 429, "its Location was known: a new upload, counted"
    finished = await limited.patch(location, content=photo[100:], headers={**patch, "Upload-Offset": "100"})
    assert finished.status_code == 204, finished.text


async def test_tus_creations_repeated_at_once_make_one_upload_counted_once(
    limited: httpx.AsyncClient,
) -> None:
    """The key is locked while a creation looks for what an earlier one made: the same POST sent
    four times at once (a client's retries racing its first try) makes one upload and one count."""
    headers = {
        **key("tus-lost-race"),
        "Tus-Resumable": "1.0.0",
        "Upload-Length": "1000",
        "Idempotency-Key": "lost-201-race",
    }

    answers = await asyncio.gather(*(limited.post("/files/", headers=headers) for _ in range(4)))

    assert [answer.status_code for answer in answers] == [201] * 4, [answer.text for answer in answers]
    assert len({answer.headers["location"] for answer in answers}) == 1
    assert sum("ratelimit" in answer.headers for answer in answers) == 1
    gone = await limited.delete(
        answers[0].headers["location"], headers={**key("tus-lost-race"), "Tus-Resumable": "1.0.0"}
    )
    assert gone.status_code == 204


async def test_tus_refusals_by_key_carry_the_tus_version(limited: httpx.AsyncClient) -> None:
    tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "100"}

    forbidden = await limited.post("/files/", headers={**key("zero"), **tus})
    no_key = await limited.post("/files/", headers=tus)

    assert (forbidden.status_code, forbidden.json()) == (
        403,
        {"detail": UPLOADS_FORBIDDEN.format(setting="uploads_per_minute")},
    )
    assert forbidden.headers["ratelimit-policy"] == '"minute";q=0;w=60'
    assert (no_key.status_code, no_key.headers["www-authenticate"]) == (401, "ApiKey")
    for answer in (forbidden, no_key):
        assert answer.headers["tus-resumable"] == "1.0.0"


async def test_a_tus_creation_refused_for_its_headers_or_open_uploads_costs_no_quota(
    limited: httpx.AsyncClient,
) -> None:
    """Three a minute: five refusals that need no body, and the open-upload limit, use none of them."""
    headers = {**key("tus-checks"), "Tus-Resumable": "1.0.0", "Upload-Length": "100"}
    unknown_preset = base64.b64encode(b"no-such-preset").decode()
    refused = [
        await limited.post("/files/", headers={**headers, "Tus-Resumable": "0.2.2"}),
        await limited.post("/files/", headers={**headers, "Upload-Length": "ten"}),
        await limited.post("/files/", headers={**headers, "Upload-Length": str(10**12)}),
        await limited.post("/files/", headers={**headers, "Idempotency-Key": "has a space"}),
        await limited.post("/files/", headers={**headers, "Upload-Metadata": f"preset {unknown_preset}"}),
    ]
    assert [answer.status_code for answer in refused] == [412, 400, 413, 400, 422]

    created = [await limited.post("/files/", headers=headers) for _ in range(TUS_MAX_OPEN_UPLOADS)]
    too_many = await limited.post("/files/", headers=headers)
    assert [answer.status_code for answer in created] == [201] * TUS_MAX_OPEN_UPLOADS
    assert too_many.status_code == 429 and "unfinished uploads already" in too_many.json()["detail"]
    ended = await limited.delete(created[0].headers["location"], headers=headers)
    assert ended.status_code == 204

    third = await limited.post("/files/", headers=headers)
    assert third.status_code == 201, "the minute's third upload: no refusal above cost one"
    assert third.headers["ratelimit"].startswith('"minute";r=0')
    await limited.delete(third.headers["location"], headers=headers)
    over = await limited.post("/files/", headers=headers)
    assert (over.status_code, over.headers["tus-resumable"]) == (429, "1.0.0")
    assert "uploads a minute" in over.json()["detail"] and int(over.headers["retry-after"]) >= 1


async def test_an_upload_refused_for_its_headers_costs_no_quota(limited: httpx.AsyncClient) -> None:
    """One a minute: a malformed Idempotency-Key, a body that is not multipart, and a declared
    length over the limit are refused on their headers alone, before anything is counted."""
    checks = key("form-checks")
    malformed = await limited.post(
        "/upload",
        files={"file": ("k.jpg", images.jpeg(), "image/jpeg")},
        headers={**checks, "Idempotency-Key": "has a space"},
    )
    not_multipart = await limited.post("/upload", content=images.jpeg(), headers=checks)
    # Declared only (httpx would not send a body shorter than its Content-Length).
    too_large_status = await _status_line_of_declared_upload(
        str(limited.base_url), checks["X-API-Key"], 99_999_999
    )
    admitted = await upload(limited, checks)

    assert [answer.status_code for answer in (malformed, not_multipart)] == [400, 422]
    assert too_large_status.startswith(b"HTTP/1.1 413"), too_large_status
    assert admitted.status_code == 200, "one a minute, and the refused uploads did not use it"
    assert (await upload(limited, key("form-checks"))).status_code == 429


async def test_a_key_with_max_priority_may_not_ask_for_more_on_any_ingest_path(
    limited: httpx.AsyncClient,
) -> None:
    """An opt-in cap (`max_priority`): above it is a 422 naming the cap, at or below it (or without
    the field) the upload goes through; keys without the field may ask for any (the default)."""
    capped = key("capped")

    async def upload_at(headers: dict[str, str], priority: str | None) -> httpx.Response:
        data = {} if priority is None else {"priority": priority}
        files = {"file": ("k.jpg", images.jpeg(), "image/jpeg")}
        return await limited.post("/upload", files=files, data=data, headers=headers)

    above = await upload_at(capped, "interactive")
    tus_above = await limited.post(
        "/files/",
        headers={
            **capped,
            "Tus-Resumable": "1.0.0",
            "Upload-Length": "100",
            "Upload-Metadata": f"priority {base64.b64encode(b'interactive').decode()}",
        },
    )
    at_cap, below, default = [await upload_at(capped, value) for value in ("normal", "bulk", None)]
    uncapped = await upload_at(key("plain"), "interactive")

    expected = {"detail": PRIORITY_ABOVE_CAP.format(most="normal", allowed="normal, bulk")}
    assert (above.status_code, above.json()) == (422, expected)
    assert (tus_above.status_code, tus_above.json()) == (422, expected)
    assert tus_above.headers["tus-resumable"] == "1.0.0"
    assert [answer.status_code for answer in (at_cap, below, default, uncapped)] == [200] * 4
    made = ((at_cap, capped), (below, capped), (default, capped), (uncapped, key("plain")))
    priorities = [
        (await limited.get(f"/status/{answer.json()['task_id']}", headers=headers)).json()["priority"]
        for answer, headers in made
    ]
    assert priorities == ["normal", "bulk", "normal", "interactive"]
