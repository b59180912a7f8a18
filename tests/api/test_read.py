"""Reading tasks back: GET /status, /result, /processed, the form, health, readiness and /docs."""

from __future__ import annotations

import html
import uuid
from datetime import datetime

import httpx
import pytest

from api.deps import TASK_NOT_FOUND
from api.routes.tasks import PROCESSED_NOT_FOUND
from tests import images


async def test_status_of_a_new_task_has_every_documented_field(client: httpx.AsyncClient) -> None:
    created = (await client.post("/upload", files={"file": ("new.jpg", images.jpeg(), "image/jpeg")})).json()

    response = await client.get(created["status_url"])

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "task_id", "filename", "status", "upload_time", "error", "attempts", "started_at", "finished_at",
        "processed_url", "processing", "focus", "outputs", "callback", "placeholder", "trace_id",
        "priority",
    }  # fmt: skip
    assert body["trace_id"] is None, "this API does not trace (OTEL_EXPORTER_OTLP_ENDPOINT unset)"
    watermark = {
        "op": "watermark",
        "text": "AI magic added!",
        "position": "top-left",
        "color": "red",
        "opacity": 1.0,
    }
    assert body["processing"] == [{"name": "image", "preset": "default", "ops": [watermark]}]
    assert body["focus"] is None, "no focus field was sent"
    assert body["task_id"] == created["task_id"]
    assert body["filename"] == "new.jpg"
    assert body["status"] in ("pending", "processing", "done")
    assert datetime.fromisoformat(body["upload_time"]).tzinfo is not None
    if body["status"] != "done":
        assert body["processed_url"] is None


@pytest.mark.parametrize("path", ["/status/999999", "/result/999999"])
async def test_an_unknown_task_is_404_with_the_documented_body(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 404
    assert response.json() == {"detail": TASK_NOT_FOUND}


@pytest.mark.parametrize(
    ("task_id", "code"), [("abc", 422), ("0", 404), ("-1", 404), ("99999999999999999999", 404)]
)
async def test_an_impossible_task_id_is_404_or_422_not_500(
    client: httpx.AsyncClient, task_id: str, code: int
) -> None:
    response = await client.get(f"/status/{task_id}")

    assert response.status_code == code


@pytest.mark.parametrize(
    "name", ["nothere.jpg", "0123456789abcdef0123456789abcdef.jpg", "config.py", "%2e%2e"]
)
async def test_processed_files_are_served_by_generated_name_only(
    client: httpx.AsyncClient, name: str
) -> None:
    response = await client.get(f"/processed/{name}")

    assert response.status_code == 404
    assert response.json() == {"detail": PROCESSED_NOT_FOUND}


async def test_the_form_page_posts_a_file_field_under_a_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'action="/upload"' in page and 'enctype="multipart/form-data"' in page
    assert 'name="file"' in page and 'type="file"' in page
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_result_page_escapes_the_file_name_and_refreshes_while_waiting(
    client: httpx.AsyncClient,
) -> None:
    hostile = '"><img src=x onerror=alert(1)>.png'
    created = (await client.post("/upload", files={"file": (hostile, images.png(), "image/png")})).json()

    response = await client.get(created["result_url"])

    assert response.status_code == 200
    page = response.text
    assert "<img src=x onerror" not in page
    assert html.escape(created["filename"]) in page
    assert 'http-equiv="refresh"' in page, "a pending task's page keeps itself current"
    assert "default-src 'self'" in response.headers["content-security-policy"]


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    ready = await client.get("/ready")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "database": "ok", "nats": "ok"})


async def test_the_openapi_document_describes_the_upload_form(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    upload = spec["paths"]["/upload"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(upload["responses"])
    assert spec["paths"]["/status/{task_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert "/ready" in spec["paths"] and "/health" in spec["paths"]


async def test_every_answer_carries_a_request_id_and_keeps_a_sane_one(client: httpx.AsyncClient) -> None:
    made_up = await client.get("/health")
    kept = await client.get("/health", headers={"X-Request-ID": "proxy-7f3a.1"})
    replaced = await client.get("/health", headers={"X-Request-ID": "bad id <script>"})

    assert len(made_up.headers["x-request-id"]) == 16
    assert kept.headers["x-request-id"] == "proxy-7f3a.1"
    assert replaced.headers["x-request-id"] != "bad id <script>"


# A bookmark of the original design (tests/api/test_bookmarks.py has the rest, with a worker).
async def test_processed_by_file_name_is_404_until_done(client: httpx.AsyncClient) -> None:
    # No worker in this module: the task stays pending.
    name = f"waiting-{uuid.uuid4().hex[:8]}.jpg"
    created = await client.post("/upload", files={"file": (name, images.jpeg(), "image/jpeg")})
    assert created.status_code == 200

    response = await client.get(f"/processed/{name}")

    assert response.status_code == 404
    assert response.json() == {"detail": PROCESSED_NOT_FOUND}
