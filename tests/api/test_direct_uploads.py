"""Direct-to-storage uploads: `POST /uploads`, the file POSTed straight to a real SeaweedFS S3
gateway with the presigned form, then `POST /uploads/{id}/complete`; an API and a worker on the s3
backend."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import botocore.session
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import key_fingerprint
from api.routes.direct_uploads import (
    COMPLETED_BEFORE,
    MAX_OPEN_UPLOADS,
    NEEDS_S3,
    NOT_UPLOADED,
    TOO_MANY_OPEN,
    UNKNOWN_UPLOAD,
)
from api.uploads import TOO_LARGE
from core import direct_uploads
from core.formats import UNSUPPORTED_MESSAGE
from devstack.servers import SEAWEED_ACCESS_KEY, SEAWEED_REGION, SEAWEED_SECRET_KEY, LocalSeaweed
from devstack.stack import running_api, start_worker, stop_process
from tests import images
from tests.conftest import TEST_SETTINGS
from tests.waiting import eventually, final_status

LIMIT = int(TEST_SETTINGS["MAX_UPLOAD_BYTES"])
BUCKET = "direct-upload-tests"
PREFIX = "direct/"


@pytest.fixture(scope="module")
def seaweed(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSeaweed]:
    # A store of each module's own, thrown away after it: killed, not stopped, at the end (weed's
    # graceful stop takes about 25 s, a wait for nothing here).
    store = tmp_path_factory.mktemp("seaweed-direct")
    server = LocalSeaweed(store, log_file=workdir / f"{store.name}.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def s3_env(stack_env: dict[str, str], seaweed: LocalSeaweed) -> dict[str, str]:
    return {**stack_env, **seaweed.environment(), "S3_BUCKET": BUCKET, "S3_PREFIX": PREFIX}


def forget_direct_tasks(database_url: str) -> None:
    """Delete the tasks direct uploads made, and the declared uploads: their files are in this
    module's bucket, which the other modules' APIs (local storage, same database) cannot serve
    (the web UI's gallery would show them as broken images)."""

    async def forget() -> None:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await connection.execute(
                "DELETE FROM image_tasks WHERE input_name IN (SELECT object_name FROM direct_uploads)"
            )
            await connection.execute("DELETE FROM direct_uploads")
        finally:
            await connection.close()

    asyncio.run(forget())


@pytest.fixture(scope="module")
def s3_api(s3_env: dict[str, str], workdir: Path) -> Iterator[str]:
    with running_api(s3_env, log_file=workdir / "direct-api.log") as base_url:
        yield base_url
    forget_direct_tasks(s3_env["DATABASE_URL"])


@pytest.fixture(scope="module")
def s3_worker(s3_env: dict[str, str], workdir: Path) -> Iterator[subprocess.Popen]:
    log_file = workdir / "direct-worker.log"
    process = start_worker(s3_env, log_file=log_file)
    yield process
    assert stop_process(process) == 0, log_file.read_text()[-3000:]


@pytest.fixture(scope="module")
def bucket(seaweed: LocalSeaweed) -> Any:
    """A plain S3 client on the same server, to look at objects behind the API's back."""
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        region_name=SEAWEED_REGION,
        aws_access_key_id=SEAWEED_ACCESS_KEY,
        aws_secret_access_key=SEAWEED_SECRET_KEY,
    )


@pytest.fixture
async def api(s3_api: str) -> Any:
    async with httpx.AsyncClient(base_url=s3_api, timeout=30) as http:
        yield http


def exists(bucket: Any, key: str) -> bool:
    try:
        bucket.head_object(Bucket=BUCKET, Key=key)
    except bucket.exceptions.ClientError:
        return False
    return True


async def declare(api: httpx.AsyncClient, data: bytes, **extra: Any) -> dict[str, Any]:
    body = {"filename": "photo.jpg", "size": len(data), "content_type": "image/jpeg", **extra}
    response = await api.post("/uploads", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def send(declared: dict[str, Any], data: bytes, content_type: str = "image/jpeg") -> httpx.Response:
    """What a browser or curl does with the presigned form: its fields, then the file."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            declared["url"], data=declared["fields"], files={"file": ("photo.jpg", data, content_type)}
        )


async def test_a_direct_upload_becomes_a_task_like_an_upload(
    api: httpx.AsyncClient, s3_worker: subprocess.Popen, bucket: Any
) -> None:
    data = images.jpeg(640, 480)
    declared = await declare(api, data, filename="holiday.jpg", preset="thumbnail")
    assert declared["complete_url"] == f"/uploads/{declared['upload_id']}/complete"
    assert declared["fields"]["key"].startswith(f"{PREFIX}uploads/")

    sent = await send(declared, data)
    assert sent.status_code in (200, 201, 204), sent.text
    completed = await api.post(declared["complete_url"])

    assert completed.status_code == 200, completed.text
    body = completed.json()
    assert body["filename"] == "holiday.jpg"
    status = await final_status(api, body["task_id"])
    assert status["status"] == "done", status
    assert status["processing"][0]["preset"] == "thumbnail"
    original = await api.get(f"/tasks/{body['task_id']}/original")
    assert original.content == data
    assert exists(bucket, declared["fields"]["key"])  # the task's original, where the client put it


async def test_completing_twice_answers_the_same_task(api: httpx.AsyncClient) -> None:
    data = images.png(80, 60)
    declared = await declare(api, data, filename="twice.png", content_type="image/png")
    await send(declared, data, "image/png")

    first = await api.post(declared["complete_url"])
    again = await api.post(declared["complete_url"])

    assert first.status_code == again.status_code == 200
    assert again.json()["task_id"] == first.json()["task_id"]
    assert again.json()["message"] == COMPLETED_BEFORE
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_two_completions_at_once_make_one_task(api: httpx.AsyncClient, db: AsyncSession) -> None:
    data = images.jpeg(200, 150)
    declared = await declare(api, data, filename="racing.jpg")
    await send(declared, data)

    answers = await asyncio.gather(*(api.post(declared["complete_url"]) for _ in range(4)))

    assert [answer.status_code for answer in answers] == [200] * 4
    assert len({answer.json()["task_id"] for answer in answers}) == 1
    key = declared["fields"]["key"].rsplit("/", 1)[1]
    rows = await db.execute(text("SELECT count(*) FROM image_tasks WHERE input_name = :name"), {"name": key})
    assert rows.scalar_one() == 1


async def test_completing_before_the_file_is_sent_is_a_409_and_can_be_retried(api: httpx.AsyncClient) -> None:
    data = images.jpeg()
    declared = await declare(api, data)

    early = await api.post(declared["complete_url"])
    await send(declared, data)
    later = await api.post(declared["complete_url"])

    assert early.status_code == 409
    assert early.json() == {"detail": NOT_UPLOADED}
    assert later.status_code == 200, later.text


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"<html>not an image</html>" * 10, 415),  # refused by the sniff (a ranged GET)
        (b"II+\0" + bytes(200), 415),  # passes the sniff; the probe names BigTIFF
        (images.png_claiming(20_000, 20_000), 422),  # over MAX_IMAGE_PIXELS, from the header
    ],
)
async def test_a_bad_file_is_refused_as_upload_refuses_it_and_deleted(
    api: httpx.AsyncClient, client: httpx.AsyncClient, bucket: Any, data: bytes, status: int
) -> None:
    declared = await declare(api, data)
    await send(declared, data)
    assert exists(bucket, declared["fields"]["key"])

    completed = await api.post(declared["complete_url"])
    uploaded = await client.post("/upload", files={"file": ("photo.jpg", data, "image/jpeg")})

    assert completed.status_code == uploaded.status_code == status
    assert completed.json() == uploaded.json()
    assert not exists(bucket, declared["fields"]["key"])
    again = await api.post(declared["complete_url"])
    assert (again.status_code, again.json()) == (status, completed.json())


async def test_the_text_sniff_says_what_upload_says(api: httpx.AsyncClient) -> None:
    data = b"plain text, no image"
    declared = await declare(api, data, content_type="text/plain")
    assert declared["fields"]["Content-Type"] == "application/octet-stream"
    await send(declared, data, "application/octet-stream")

    completed = await api.post(declared["complete_url"])

    assert completed.status_code == 415
    assert completed.json() == {"detail": UNSUPPORTED_MESSAGE}


async def test_the_bucket_refuses_more_than_the_declared_size(api: httpx.AsyncClient, bucket: Any) -> None:
    data = images.jpeg(640, 480)
    declared = await declare(api, data[:1000])

    sent = await send(declared, data)

    assert sent.status_code == 400, sent.text
    assert "EntityTooLarge" in sent.text
    assert not exists(bucket, declared["fields"]["key"])


async def test_a_declared_size_over_the_limit_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/uploads", json={"filename": "a.jpg", "size": LIMIT + 1, "content_type": "image/jpeg"}
    )

    assert response.status_code == 413
    assert response.json() == {"detail": TOO_LARGE.format(limit=LIMIT)}


@pytest.mark.parametrize(
    "extra",
    [
        {"preset": "no-such-preset"},
        {"ops": [{"op": "spin"}]},
        {"ops": "not json"},
        {"presets": "thumbnail"},  # misspelt: unknown fields are refused
        {"callback_url": "ftp://example.com/hook"},
        {"priority": "urgent"},
    ],
)
async def test_bad_fields_are_refused_before_anything_is_sent(
    api: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    response = await api.post(
        "/uploads", json={"filename": "a.jpg", "size": 10, "content_type": "image/jpeg", **extra}
    )

    assert response.status_code == 422, response.text


async def test_ops_as_a_json_value_are_applied(api: httpx.AsyncClient, s3_worker: subprocess.Popen) -> None:
    data = images.jpeg(400, 300)
    declared = await declare(api, data, ops=[{"op": "resize", "width": 100}])
    await send(declared, data)

    completed = await api.post(declared["complete_url"])
    status = await final_status(api, completed.json()["task_id"])

    assert status["status"] == "done", status
    assert status["outputs"][0]["width"] == 100


async def test_an_unknown_upload_is_404(api: httpx.AsyncClient) -> None:
    response = await api.post(f"/uploads/{'0' * 32}/complete")

    assert response.status_code == 404
    assert response.json() == {"detail": UNKNOWN_UPLOAD}


async def test_other_backends_say_direct_uploads_need_s3(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/uploads", json={"filename": "a.jpg", "size": 10, "content_type": "image/jpeg"}
    )

    assert response.status_code == 403
    assert response.json() == {"detail": NEEDS_S3}


async def test_an_upload_never_completed_is_swept_with_its_object(
    api: httpx.AsyncClient, bucket: Any, db: AsyncSession
) -> None:
    data = images.jpeg()
    declared = await declare(api, data)
    await send(declared, data)
    key = declared["fields"]["key"]
    # As if it had expired long ago: the API's sweep (every tenth of LOST_AFTER_SECONDS) takes it.
    long_ago = datetime.now(UTC) - timedelta(days=2)
    await db.execute(
        text("UPDATE direct_uploads SET expires_at = :at WHERE id = :id"),
        {"at": long_ago, "id": declared["upload_id"]},
    )
    await db.commit()

    async def gone() -> bool:
        return not exists(bucket, key)

    await eventually(gone, timeout=30, what=f"the sweep to delete {key}")
    completed = await api.post(declared["complete_url"])
    assert completed.status_code == 404


KEYS = ("direct-key-one-0123456789", "direct-key-two-0123456789")
# A key with one upload a minute: what costs it quota.
ONE_A_MINUTE = "direct-key-one-a-minute-0123456789"


@pytest.fixture(scope="module")
def keyed_s3_api(s3_env: dict[str, str], workdir: Path) -> Iterator[str]:
    api_keys = json.dumps([*KEYS, {"key": ONE_A_MINUTE, "uploads_per_minute": 1}])
    with running_api({**s3_env, "API_KEYS": api_keys}, log_file=workdir / "direct-keyed-api.log") as url:
        yield url


async def test_an_upload_is_completed_only_with_the_key_that_declared_it(keyed_s3_api: str) -> None:
    data = images.jpeg()
    async with httpx.AsyncClient(base_url=keyed_s3_api, timeout=30) as http:
        anonymous = await http.post(
            "/uploads", json={"filename": "a.jpg", "size": len(data), "content_type": "image/jpeg"}
        )
        http.headers["X-API-Key"] = KEYS[0]
        declared = await declare(http, data)
        await send(declared, data)
        other = await http.post(declared["complete_url"], headers={"X-API-Key": KEYS[1]})
        owner = await http.post(declared["complete_url"])

    assert anonymous.status_code == 401
    assert other.status_code == 404
    assert other.json() == {"detail": UNKNOWN_UPLOAD}
    assert owner.status_code == 200, owner.text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 422),
        (b"[]", 422),
        (b'{"filename": "a.jpg", "size": "big", "content_type": "image/jpeg"}', 422),
        (b'{"filename": "a.jpg", "content_type": "image/jpeg"}', 422),
        (b'{"filename": "' + b"a" * 70_000 + b'"}', 413),
    ],
)
async def test_a_body_that_is_no_declaration_is_refused_in_words(
    api: httpx.AsyncClient, body: bytes, status: int
) -> None:
    response = await api.post("/uploads", content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == status
    assert isinstance(response.json()["detail"], str)


async def test_a_malformed_upload_id_is_unknown(api: httpx.AsyncClient) -> None:
    response = await api.post("/uploads/not-an-id/complete")

    assert response.status_code == 404
    assert response.json() == {"detail": UNKNOWN_UPLOAD}


async def declare_the_most(db: AsyncSession, owner: str) -> None:
    """As if the key of `owner` had declared the limit's worth of uploads and sent none."""
    await db.execute(
        text(
            "INSERT INTO direct_uploads (id, owner, object_name, filename, size_bytes, content_type, fields,"
            " expires_at) SELECT md5(:owner || n), :owner, md5(:owner || n) || '.jpg', 'a.jpg', 10,"
            " 'image/jpeg', '{}', now() + interval '1 hour' FROM generate_series(1, :count) AS n"
        ),
        {"owner": owner, "count": MAX_OPEN_UPLOADS},
    )
    await db.commit()


async def test_declared_uploads_waiting_for_completion_are_bounded_per_key(
    keyed_s3_api: str, db: AsyncSession
) -> None:
    owner = key_fingerprint(KEYS[1])
    await declare_the_most(db, owner)
    try:
        async with httpx.AsyncClient(base_url=keyed_s3_api, timeout=30) as http:
            body = {"filename": "a.jpg", "size": 10, "content_type": "image/jpeg"}
            refused = await http.post("/uploads", json=body, headers={"X-API-Key": KEYS[1]})
            other_key = await http.post("/uploads", json=body, headers={"X-API-Key": KEYS[0]})
    finally:
        await db.execute(text("DELETE FROM direct_uploads WHERE owner = :owner"), {"owner": owner})
        await db.commit()

    assert refused.status_code == 429
    assert refused.json() == {"detail": TOO_MANY_OPEN}
    assert refused.headers["Retry-After"] == "60"
    assert other_key.status_code == 201


async def test_a_declaration_refused_for_too_many_waiting_costs_no_quota(
    keyed_s3_api: str, db: AsyncSession
) -> None:
    owner = key_fingerprint(ONE_A_MINUTE)
    body = {"filename": "a.jpg", "size": 10, "content_type": "image/jpeg"}
    await declare_the_most(db, owner)
    try:
        async with httpx.AsyncClient(base_url=keyed_s3_api, timeout=30) as http:
            http.headers["X-API-Key"] = ONE_A_MINUTE
            too_many = await http.post("/uploads", json=body)
            await db.execute(text("DELETE FROM direct_uploads WHERE owner = :owner"), {"owner": owner})
            await db.commit()
            admitted = await http.post("/uploads", json=body)
            over = await http.post("/uploads", json=body)
    finally:
        await db.execute(text("DELETE FROM direct_uploads WHERE owner = :owner"), {"owner": owner})
        await db.commit()

    assert (too_many.status_code, too_many.json()) == (429, {"detail": TOO_MANY_OPEN})
    assert "ratelimit" not in too_many.headers, "refused before the key's limits were asked"
    assert admitted.status_code == 201, "the minute's one upload was still there"
    assert over.status_code == 429 and "uploads a minute" in over.json()["detail"]


async def test_the_priority_rides_along_to_the_task(api: httpx.AsyncClient) -> None:
    data = images.jpeg(120, 90)
    declared = await declare(api, data, priority="interactive")
    await send(declared, data)

    completed = await api.post(declared["complete_url"])

    assert completed.status_code == 200, completed.text
    status = await api.get(f"/status/{completed.json()['task_id']}")
    assert status.json()["priority"] == "interactive"


async def test_the_sweep_leaves_an_object_a_task_already_uses(
    api: httpx.AsyncClient, db: AsyncSession
) -> None:
    """A completion that made its task but could not record it (the task commits apart): the row
    looks abandoned once expired, yet its object is the task's original now and must stay."""
    data = images.jpeg(100, 80)
    declared = await declare(api, data)
    await send(declared, data)
    assert (await api.post(declared["complete_url"])).status_code == 200
    long_ago = datetime.now(UTC) - timedelta(days=2)
    async with db.begin():
        await db.execute(
            text("UPDATE direct_uploads SET task_id = NULL, expires_at = :at WHERE id = :id"),
            {"at": long_ago, "id": declared["upload_id"]},
        )
        abandoned = await direct_uploads.lock_abandoned(db, grace=timedelta(0), limit=1000)

    assert declared["upload_id"] not in {row.id for row in abandoned}
