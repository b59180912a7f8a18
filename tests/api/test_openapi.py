"""The OpenAPI document stays true where schemathesis (tests/test_fuzz.py) cannot look: answers it
never provokes (an outage's 503, a browser's 303, a replayed upload), `Allow` on every path the
app serves (documented or not), the Idempotency-Key rule at its edges, and examples that fit.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import Route

from api import reprocess_schemas, schemas
from api.deps import get_services, get_session
from api.main import app
from api.openapi import IDEMPOTENCY_KEY_PATTERN
from api.routes import events, health, originals, pages, presets, tasks
from tests import images

# Routes that reach neither PostgreSQL nor the file store, so never answer 503, and why.
NO_BACKEND = {
    "GET /health": "the process answers; deliberately checks nothing else",
    "GET /presets": "the presets come from the settings, read at start-up",
}
# /ready's 503 is its answer about the dependencies, with its own body (ReadinessResponse).
OWN_503_BODY = {"GET /ready"}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# Example values for path parameters: a task and a file that do not exist, so no probe changes anything.
PATH_VALUES = {"task_id": "999999999", "name": "0" * 32 + ".jpg", "path": "app.js"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return app.openapi()


def _routes() -> list[APIRoute]:
    routers = (tasks.router, originals.router, events.router, presets.router, health.router, pages.router)
    return [route for router in routers for route in router.routes if isinstance(route, APIRoute)]


def _calls(dependant: Any) -> set[Any]:
    found = {dependant.call}
    for child in dependant.dependencies:
        found |= _calls(child)
    return found


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_every_operation_that_reaches_the_database_or_file_store_declares_503_with_retry_after(
    document: dict[str, Any],
) -> None:
    operations = _operations(document)
    for label, operation in operations.items():
        if label in NO_BACKEND:
            assert "503" not in operation["responses"], label
            continue
        answer = operation["responses"].get("503")
        assert answer is not None, f"{label} can answer 503 but does not declare it"
        assert answer["headers"]["Retry-After"]["required"] is True, label
        expected = "ReadinessResponse" if label in OWN_503_BODY else "ErrorResponse"
        assert answer["content"]["application/json"]["schema"]["$ref"].endswith(expected), label


def test_a_route_listed_as_not_reaching_a_backend_has_no_way_to_one() -> None:
    # Services carry the engine, driver pool and storage; a session is the database itself. A route
    # in NO_BACKEND may take services only for what they hold besides (the presets).
    for route in _routes():
        for method in route.methods:
            label = f"{method} {route.path}"
            if label in NO_BACKEND:
                assert get_session not in _calls(route.dependant), label
                if label == "GET /health":
                    assert get_services not in _calls(route.dependant), label


def test_every_json_route_the_app_serves_is_in_the_document(document: dict[str, Any]) -> None:
    # Pages (HTML) and /metrics (Prometheus text) are for browsers and scrapers; everything else is API.
    documented = set(_operations(document))
    for route in _routes():
        if route.include_in_schema:
            assert {f"{method} {route.path}" for method in route.methods} <= documented, route.path
    assert "GET /tasks/{task_id}/original" in documented
    assert (
        "text/event-stream"
        in _operations(document)["GET /tasks/{task_id}/events"]["responses"]["200"]["content"]
    )


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    # A body schema inlined with its own `$defs` left `#/$defs/Priority` dangling (POST /uploads):
    # schemathesis then skipped that part of the body, and generated clients fail on it.
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert refs, "the document uses references"
    for ref in refs:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"unresolvable reference {ref}"
            node = node[part]


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda match: PATH_VALUES[match[1]], path)


def _served_paths() -> set[str]:
    paths = {route.path for route in app.router.routes if isinstance(route, Route)}
    paths |= {route.path for route in _routes()}
    paths |= {"/metrics", "/static/{path}"}
    return {
        path for path in paths if "{" not in path or set(re.findall(r"\{(\w+)", path)) <= set(PATH_VALUES)
    }


async def test_options_and_405_list_exactly_the_methods_each_path_answers(client: httpx.AsyncClient) -> None:
    for path in sorted(_served_paths()):
        url = _concrete(path)
        options = await client.options(url)
        allow = [method.strip() for method in options.headers.get("allow", "").split(",")]
        if options.status_code == 204:
            assert allow[-1] == "OPTIONS", (path, allow)
        else:  # a mount's own app (static files) answers OPTIONS itself: 405, not listing it
            assert options.status_code == 405 and "OPTIONS" not in allow, (path, options.status_code, allow)
        for method in METHODS:
            # POST gets an empty body: a real route refuses it (4xx), but never with 405.
            answer = await client.request(method, url)
            if method in allow:
                assert answer.status_code != 405, (path, method)
            else:
                assert answer.status_code == 405, (path, method, answer.status_code)
                assert answer.headers["allow"] == options.headers["allow"], (path, method)


async def test_options_on_a_task_lists_delete_as_well_as_get(client: httpx.AsyncClient) -> None:
    answer = await client.options("/tasks/1")
    assert answer.status_code == 204
    methods = {method.strip() for method in answer.headers["allow"].split(",")}
    assert {"GET", "DELETE", "OPTIONS"} <= methods


async def test_options_on_a_path_the_app_does_not_serve_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.options("/no/such/path")).status_code == 404


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("a", True),
        ("!", True),
        ("~" * 200, True),
        ("3f1c6a52-5f1e-4c1b-9d8e-1b2a7c4e9f00", True),
        ("x" * 201, False),
        ("two words", False),
        ("tab\there", False),
    ],
)
async def test_the_idempotency_key_pattern_is_the_rule_the_server_applies(
    client: httpx.AsyncClient, document: dict[str, Any], key: str, valid: bool
) -> None:
    parameter = next(
        p for p in _operations(document)["POST /upload"]["parameters"] if p["name"] == "Idempotency-Key"
    )
    assert parameter["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN
    assert bool(re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key)) is valid
    # A valid key already used (by an earlier run of this case) is replayed, never refused: 400 only
    # ever means the key broke the rule.
    answer = await client.post(
        "/upload",
        files={"file": ("k.png", images.png(8, 8), "image/png")},
        headers={"Idempotency-Key": key},
    )
    assert (answer.status_code == 400) is not valid, (key, answer.status_code, answer.text)


async def test_a_replayed_upload_carries_the_documented_header(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    declared = _operations(document)["POST /upload"]["responses"]["200"]["headers"]["Idempotent-Replayed"]
    headers = {"Idempotency-Key": f"replayed-{uuid.uuid4().hex}"}
    data = images.png(9, 9)
    first = await client.post("/upload", files={"file": ("r.png", data, "image/png")}, headers=headers)
    again = await client.post("/upload", files={"file": ("r.png", data, "image/png")}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] in declared["schema"]["enum"]


async def test_a_browser_upload_gets_the_documented_303_and_location(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    declared = _operations(document)["POST /upload"]["responses"]["303"]["headers"]["Location"]
    answer = await client.post(
        "/upload",
        files={"file": ("b.png", images.png(10, 10), "image/png")},
        headers={"Accept": "text/html"},
    )
    assert answer.status_code == 303
    assert re.fullmatch(declared["schema"]["pattern"], answer.headers["location"])


def _model(name: str) -> type[BaseModel]:
    for module in (schemas, presets, reprocess_schemas):
        model = getattr(module, name, None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model
    raise AssertionError(f"no model for the component {name}")


def test_every_example_fits_its_model(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    checked = 0
    for name, schema in components.items():
        for example in schema.get("examples", []):
            _model(name).model_validate(example)
            checked += 1
    for operation in _operations(document).values():
        for answer in operation["responses"].values():
            content = answer.get("content", {}).get("application/json", {})
            if "example" in content:
                reference = content["schema"]["$ref"]
                _model(reference.rsplit("/", 1)[-1]).model_validate(content["example"])
                checked += 1
    assert checked >= 10


async def test_the_documented_upload_example_is_accepted(
    client: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    body = _operations(document)["POST /upload"]["requestBody"]["content"]["multipart/form-data"]
    example = body["examples"]["preset"]["value"]
    fields = {name: value for name, value in example.items() if name != "file"}
    answer = await client.post(
        "/upload", data=fields, files={"file": ("example.bmp", example["file"].encode(), "image/bmp")}
    )
    assert answer.status_code == 200, answer.text
