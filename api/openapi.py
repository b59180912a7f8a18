"""The OpenAPI document (`/openapi.json`, `/docs`): what FastAPI derives from the routes, plus what
it cannot see, kept here so every route declares it the same way.

- The answers routes share (`errors(401, 404, 503)`): each with the error body, and the headers
  that come with it (`WWW-Authenticate` on 401, `Retry-After` on 429 and 503).
- The upload's multipart body, which `api/uploads.py` reads by hand: which image types `file`
  takes, that `ops` and `outputs` are JSON (with their schema), and that at most one processing
  field may be given.
- `openapi_document(app)`: FastAPI's document, with the operation models `ops` refers to added to
  its components, the models' examples kept whole (nulls included), and a note on the answers the
  HTTP layer gives before any route runs.

Every route that reads or writes PostgreSQL, or the file store, declares 503 with `Retry-After`:
an outage (a stopped server, or one refusing connections) is answered that way, with nothing
changed. tests/api/test_openapi.py keeps that, and the rest of this document, true.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.callback_urls import MAX_URL_CHARS
from api.deps import API_KEY_REQUIRED, TASK_NOT_FOUND
from api.reprocess_schemas import JobRequest, ProcessingRequest
from api.schemas import DATABASE_UNAVAILABLE, DirectUploadRequest, ErrorResponse
from core.formats import ALLOWED_FORMATS, CONTENT_TYPES
from core.processing.operations import MAX_OPS, OPS
from core.processing.outputs import MAX_OUTPUTS, USABLE_NAME

# The rule `POST /upload` applies to Idempotency-Key (api/routes/tasks.py uses this very pattern).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]{1,200}$"
IMAGE_CONTENT_TYPES = tuple(CONTENT_TYPES[fmt] for fmt in ALLOWED_FORMATS)

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds after which the same request may succeed.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}


def error(
    description: str, example: str, *, headers: dict[str, Any] | None = None, html: bool = False
) -> dict[str, Any]:
    """A documented error answer: `{"detail": ...}`, with `example` as its detail; `html` when a
    browser (Accept: text/html) gets a page instead."""
    content: dict[str, Any] = {"application/json": {"example": {"detail": example}}}
    if html:
        content["text/html"] = {"schema": {"type": "string"}}
    response: dict[str, Any] = {"model": ErrorResponse, "description": description, "content": content}
    if headers:
        response["headers"] = headers
    return response


_SHARED: dict[int, dict[str, Any]] = {
    401: error(
        "API keys are on (API_KEYS) and X-API-Key is missing or unknown.",
        API_KEY_REQUIRED,
        headers={
            "WWW-Authenticate": {
                "description": "The scheme to authenticate with.",
                "required": True,
                "schema": {"type": "string", "enum": ["ApiKey"]},
            }
        },
    ),
    404: error("No such task, or another API key's (the two are answered alike).", TASK_NOT_FOUND),
    503: error(
        "PostgreSQL or the file store cannot be reached (stopped, or refusing connections); nothing "
        "was changed. The same request may succeed after `Retry-After` seconds.",
        DATABASE_UNAVAILABLE,
        headers=RETRY_AFTER,
    ),
}


def sentence_or_list_422(description: str, *, html: bool = False) -> dict[str, Any]:
    """A 422 that is ours (`{"detail": "a sentence"}`) for a field a route checks itself, and
    FastAPI's (a list) for a path parameter it validates, e.g. a task id that is not a number."""
    content: dict[str, Any] = {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/ErrorResponse"},
                    {"$ref": "#/components/schemas/HTTPValidationError"},
                ]
            },
        }
    }
    if html:
        content["text/html"] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The shared answers for `responses=`: 401 (API keys), 404 (task), 503 (outage)."""
    return {status: _SHARED[status] for status in statuses}


# The operations that take a task id, for the links of answers that carry one.
TASK_OPERATIONS = {
    "GetStatus": ("get", "/status/{task_id}"),
    "GetTask": ("get", "/tasks/{task_id}"),
    "DeleteTask": ("delete", "/tasks/{task_id}"),
    "GetOriginal": ("get", "/tasks/{task_id}/original"),
    "GetEvents": ("get", "/tasks/{task_id}/events"),
}


def task_links(task_id: str) -> dict[str, Any]:
    """OpenAPI links from an answer carrying a task id (`task_id`: a runtime expression such as
    `$response.body#/task_id`) to every operation that takes one: what generated clients and
    schemathesis' stateful phase follow."""
    return {
        name: {
            "operationRef": "#/paths/" + path.replace("/", "~1") + "/" + method,
            "parameters": {"task_id": task_id},
        }
        for name, (method, path) in TASK_OPERATIONS.items()
    }


# A 1×1 BMP whose bytes are all ASCII, so the JSON document can carry it as the example `file`
# (and `/docs`' "Try it out" and schemathesis can send it as it stands).
_EXAMPLE_BMP = (
    "BM:\x00\x00\x00\x00\x00\x00\x006\x00\x00\x00(\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\x00"
    "\x18\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00@@@\x00"
)

_OPS_REF = {"$ref": "#/components/schemas/Ops"}
BODY_MODELS: tuple[type[BaseModel], ...] = (ProcessingRequest, JobRequest, DirectUploadRequest)
# Empty processing fields count as not given (core.processing.forms.resolve).
_GIVEN = {"type": "string", "minLength": 1}
_PROCESSING = ("preset", "ops", "outputs")

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "minLength": 1,
                            "description": "The image: "
                            + ", ".join(fmt if fmt != "WEBP" else "WebP" for fmt in ALLOWED_FORMATS)
                            + ", recognised by its bytes (not its name or declared type), within "
                            "MAX_UPLOAD_BYTES and MAX_IMAGE_PIXELS.",
                        },
                        "preset": {
                            "type": "string",
                            "description": "A preset name (see GET /presets); `default` when no processing "
                            "field is given.",
                        },
                        "ops": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": _OPS_REF,
                            "description": 'JSON list of operations, in order, e.g. `[{"op": "resize", '
                            '"width": 800}, {"op": "grayscale"}]`.',
                        },
                        "outputs": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {
                                "type": "object",
                                "minProperties": 1,
                                "maxProperties": MAX_OUTPUTS,
                                "propertyNames": {"pattern": f"^{USABLE_NAME.pattern}$"},
                                "additionalProperties": {
                                    "oneOf": [{"type": "string", "description": "A preset name."}, _OPS_REF]
                                },
                            },
                            "description": "JSON object of output name -> preset name or ops list, for "
                            'several derivatives of one upload, e.g. `{"thumb": "thumbnail", "big": '
                            '[{"op": "resize", "width": 2000}]}`.',
                        },
                        "focus": {
                            "type": "string",
                            "pattern": r"^(\s*[0-9.]+\s*,\s*[0-9.]+\s*)?$",  # empty: not given
                            "description": 'The point `gravity: "focus"` keeps: x,y fractions (0-1) from the '
                            "top left of the picture as displayed, e.g. `0.3,0.6`.",
                        },
                        "callback_url": {
                            "type": "string",
                            "maxLength": MAX_URL_CHARS,
                            # Empty counts as not given, like the processing fields.
                            "anyOf": [
                                {"maxLength": 0},
                                {
                                    "format": "uri",
                                    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^@/?#]+(?:[/?#].*)?$",
                                },
                            ],
                            "description": "http(s) URL to POST the final status to, signed (see README); "
                            "only when the server sets WEBHOOK_SECRET. Its host must resolve (and, unless "
                            "WEBHOOK_ALLOW_PRIVATE, to a public address).",
                        },
                        "priority": {
                            "type": "string",
                            # Empty counts as not given: the default, `normal`.
                            "enum": ["", "interactive", "normal", "bulk"],
                            "description": "Which waiting task goes to the workers first: `interactive`, "
                            "then `normal` (the default), then `bulk` (which is slowed, never stopped). "
                            "Between API keys, waiting tasks take turns.",
                        },
                    },
                    # One way of choosing the processing at most: a given (non-empty) processing field
                    # leaves the other two empty or out.
                    "dependentSchemas": {
                        name: {
                            "if": {"properties": {name: _GIVEN}},
                            "then": {
                                "properties": {
                                    other: {"maxLength": 0} for other in _PROCESSING if other != name
                                }
                            },
                        }
                        for name in _PROCESSING
                    },
                    "description": "Other fields (a submit button, a CSRF token) are ignored and named "
                    "in the answer's `ignored_fields`; one that looks like a misspelt field of these "
                    "(`presets`, `op`) is refused (422, saying which was meant).",
                },
                "encoding": {
                    "file": {"contentType": ", ".join(IMAGE_CONTENT_TYPES)},
                    "ops": {"contentType": "application/json"},
                    "outputs": {"contentType": "application/json"},
                },
                "examples": {
                    "preset": {
                        "summary": "A 1×1 BMP, made into a thumbnail",
                        "value": {"file": _EXAMPLE_BMP, "preset": "thumbnail"},
                    }
                },
            }
        },
    }
}

_TRANSPORT_NOTE = """

Before any route runs, the HTTP layer may answer any request (plain text, connection closed):
431 for a request head over its limits, 408 for a head or body that stalls, and 503 (with
`Retry-After`) when every connection slot is busy. See the README's "Security limits"."""


def _models(base: type[BaseModel] = BaseModel) -> Iterator[type[BaseModel]]:
    for model in base.__subclasses__():
        yield model
        yield from _models(model)


def _restore_examples(components: dict[str, Any]) -> None:
    """FastAPI writes the document without nulls (`exclude_none`), the models' examples' nulls
    included, which would leave a task's example without its required `error: null`: the models'
    own examples go back in as written."""
    models = {model.__name__: model for model in _models()}
    for name, schema in components.items():
        model = models.get(name)
        extra = model.model_config.get("json_schema_extra") if model is not None else None
        if isinstance(extra, dict) and "examples" in extra:
            schema["examples"] = extra["examples"]


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The document `/openapi.json` serves (built once, then cached on the app)."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=(app.description or "") + _TRANSPORT_NOTE,
            routes=app.routes,
        )
        components = document.setdefault("components", {}).setdefault("schemas", {})
        _restore_examples(components)
        ops = OPS.json_schema(ref_template="#/components/schemas/{model}")
        components.update(ops.pop("$defs", {}))
        components["Ops"] = {**ops, "maxItems": MAX_OPS, "minItems": 1}
        # The JSON bodies read by api.request_body (not by FastAPI, so not collected by it).
        for model in BODY_MODELS:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
        app.openapi_schema = document
    return app.openapi_schema


# Answers of the routes that serve a stored image beside its 200: a part of it, and (s3 backend with
# S3_PRESIGNED_DOWNLOADS on) the redirect to the store.
STORED_FILE_ANSWERS: dict[int | str, dict[str, Any]] = {
    206: {"description": "The one byte range asked for with `Range` (`Content-Range` says which)."},
    302: {
        "description": "S3_PRESIGNED_DOWNLOADS is on: a short-lived presigned GET of the image in the "
        "bucket, which serves it (with ranges) itself.",
        "headers": {
            "Location": {"description": "The presigned URL.", "required": True, "schema": {"type": "string"}}
        },
    },
    416: {"description": "The `Range` asked for starts past the end of the image."},
}
