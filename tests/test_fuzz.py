"""Schemathesis against the running API's own OpenAPI schema: no generated request makes it answer
5xx, and every answer matches what the schema documents (status code, content type, headers, body).

The schema is fetched from the real uvicorn process (`api_process`), so what is tested is what
`/docs` publishes, including `/upload`'s hand-written multipart body: schemathesis sends random
bytes as the `file`, which must be refused with a 4xx, never a 500.

Each operation is fuzzed with schemathesis' Hypothesis strategy (`operation.as_strategy`) under
`@given`, with data that fits the schema and, where the operation has inputs, data that does not.
(Its pytest loader for a schema that comes from a fixture, `schemathesis.pytest.from_fixture`,
sets the private `Node._nodeid`, which pytest 9.2 no longer has, so it cannot run here.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

# Every operation the schema publishes; a new one fails the completeness test until it is listed.
OPERATIONS = (
    "POST /upload",
    "GET /status/{task_id}",
    "GET /tasks",
    "GET /tasks/{task_id}",
    "DELETE /tasks/{task_id}",
    "GET /processed/{name}",
    "GET /presets",
    "GET /health",
    "GET /ready",
)
# Operations with no parameters and no body have no schema-violating request to generate.
WITH_INPUTS = tuple(
    label for label in OPERATIONS if label not in ("GET /health", "GET /ready", "GET /presets")
)

# /ready answers 503 when PostgreSQL or NATS is down (documented); both are up here, so it should
# not, but a 503 there is the documented answer rather than a crash.
DOCUMENTED_SERVER_ERRORS: dict[str, set[int]] = {"GET /ready": {503}}

# `file` is documented as any binary string: an OpenAPI schema cannot say "a decodable JPEG, PNG,
# GIF, WebP or BMP within the size and pixel limits", so schema-valid bytes are refused by design
# (400 empty, 415 not an image, 422 too many pixels). `positive_data_acceptance` (2xx expected for
# schema-valid data) cannot hold for /upload; these are the answers it gets instead.
UPLOAD_ANSWERS_TO_SCHEMA_VALID_BYTES = {200, 400, 415, 422}

FUZZ_SETTINGS = settings(
    max_examples=30,
    deadline=None,  # the API runs in another process: timing is the machine's, not the code's
    derandomize=True,  # the same examples every run, so a CI failure reproduces
    database=None,  # no .hypothesis/ directory left in the repository
    # Multipart bodies and constrained path parameters are built by filtering; that is expected.
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def api_schema(api_process: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api_process}/openapi.json", timeout=10)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def test_every_published_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    published = {result.ok().label for result in api_schema.get_all_operations()}
    assert published == set(OPERATIONS)


CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in WITH_INPUTS
]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode}" for label, mode in CASES])
def test_generated_requests_get_documented_answers_and_never_a_server_error(
    api_schema: schemathesis.BaseSchema, http: requests.Session, label: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the published schema"
    allowed = DOCUMENTED_SERVER_ERRORS.get(label, set())
    excluded = []
    if label == "POST /upload" and mode is GenerationMode.POSITIVE:
        excluded.append(schemathesis.checks.positive_data_acceptance)
    if label == "POST /upload" and mode is GenerationMode.NEGATIVE:
        # A multipart form carries only strings: schemathesis leaves out a text field it mutated into
        # an array or object, so what it calls a schema-violating upload is a valid one. (Bad values
        # of those fields are tested by name in tests/api/test_processing.py.)
        excluded.append(schemathesis.checks.negative_data_rejection)
    answered: list[int] = []

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(session=http, timeout=10)
        answered.append(response.status_code)
        assert response.status_code < 500 or response.status_code in allowed, (
            f"{label} answered {response.status_code}: {response.text[:500]}"
        )
        if excluded:
            assert response.status_code in UPLOAD_ANSWERS_TO_SCHEMA_VALID_BYTES, response.text[:500]
        # Every other check schemathesis has: status code documented, content type, response headers,
        # body schema, schema-violating data refused, schema-valid data accepted, auth enforced as declared.
        case.validate_response(response, excluded_checks=excluded)

    fuzz()
    assert answered, f"no request was generated for {label} ({mode})"
