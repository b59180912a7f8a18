"""`GET /tasks/{task_id}/events`: a task's status as Server-Sent Events, for pages that update live.

Each event is `event: status` with the same JSON body as `GET /status/{task_id}`: one at once, then
one whenever that body changes, and the stream ends once the task is `done`, `failed` or `cancelled`
(a deleted task ends it with `event: deleted`). Once the worker has recorded the task's placeholder,
one `event: placeholder` (its JSON, as in /status) comes before the status event that first shows
it, so it always arrives before the final status. The row is the truth and workers write it
directly, so the stream polls it, each time with a fresh short session: a stream never holds a
database connection or transaction between polls, however long it lasts.

A stream is cheap but not free (a poll every POLL_SECONDS), so a process serves at most MAX_STREAMS
at once (503 beyond), and each ends after STREAM_LIFETIME_SECONDS: the browser's EventSource
reconnects by itself after the `retry:` delay and gets the current status at once. With API keys
on, one key may hold at most MAX_STREAMS_PER_KEY of them (429 beyond), so a single key cannot
take every slot from the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.deps import CallerDep, ServicesDep, SessionDep, TaskDep
from api.openapi import RETRY_AFTER, error, errors
from api.schemas import task_status
from api.state import Services
from core import tasks
from core.models import FINAL_STATUSES, ImageTask

log = logging.getLogger(__name__)

POLL_SECONDS = 0.3
# Proxies and browsers drop a connection that stays silent for long; a comment line costs nothing.
KEEPALIVE_SECONDS = 15.0
STREAM_LIFETIME_SECONDS = 600.0
RETRY_MILLISECONDS = 2000
MAX_STREAMS = 100
# A quarter of the slots: four busy keys can fill the process, one cannot.
MAX_STREAMS_PER_KEY = MAX_STREAMS // 4
RETRY_AFTER_SECONDS = 10

TOO_MANY_STREAMS = "Too many live status streams are open on this server; poll GET /status instead."
TOO_MANY_STREAMS_FOR_KEY = (
    f"This API key already has {MAX_STREAMS_PER_KEY} live status streams open, the most one key may "
    "hold; close one or poll GET /status instead."
)
TASK_DELETED = "The task was deleted."


@dataclass
class EventStreams:
    """This process's event streams: how they pace themselves, how many may be open, how many are.

    One per app (made in the lifespan below); tests shorten the timings on their own app."""

    limit: int = MAX_STREAMS
    per_key_limit: int = MAX_STREAMS_PER_KEY
    poll_seconds: float = POLL_SECONDS
    keepalive_seconds: float = KEEPALIVE_SECONDS
    lifetime_seconds: float = STREAM_LIFETIME_SECONDS
    open: int = 0
    # Open streams by API key fingerprint (keys off: the caller is None and not counted here).
    by_key: Counter[str] = field(default_factory=Counter)

    def take(self, key: str | None) -> HTTPException | None:
        """Take a slot for `key`; the refusal to raise when none is left for it."""
        if self.open >= self.limit:
            return HTTPException(503, TOO_MANY_STREAMS, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if key is not None:
            if self.by_key[key] >= self.per_key_limit:
                return HTTPException(
                    429, TOO_MANY_STREAMS_FOR_KEY, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
                )
            self.by_key[key] += 1
        self.open += 1
        return None

    def give_back(self, key: str | None) -> None:
        self.open -= 1
        if key is not None:
            self.by_key[key] -= 1
            if not self.by_key[key]:
                del self.by_key[key]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Merged into the app's lifespan by include_router: the count belongs to the app, not the module.
    app.state.event_streams = EventStreams()
    yield


router = APIRouter(tags=["events"], lifespan=lifespan)


class EventStream(StreamingResponse):
    """A streaming response that gives its slot back however it ends (finished, client gone, error),
    including when the client left before the first byte and the stream never started."""

    def __init__(self, content: AsyncIterator[str], streams: EventStreams, key: str | None) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            # No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._streams = streams
        self._key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._streams.give_back(self._key)


def sse_event(event: str, data: str, event_id: int | None = None, *, retry_ms: int | None = None) -> str:
    """One event in the text/event-stream format (`data` is JSON, so it holds no newline)."""
    lines = []
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"event: {event}", f"data: {data}"]
    return "\n".join(lines) + "\n\n"


def _first_event_id(request: Request) -> int:
    # A reconnecting EventSource sends the last id it saw: carry on counting from there.
    last = request.headers.get("last-event-id", "")
    return int(last) + 1 if last.isdigit() and len(last) < 10 else 1


async def _read_task(services: Services, task_id: int) -> ImageTask | None:
    async with services.sessions() as session:
        return await tasks.get(session, task_id)


async def _status_events(
    request: Request, services: Services, streams: EventStreams, first: ImageTask, first_id: int
) -> AsyncIterator[str]:
    task_id = first.id
    event_id = first_id
    status = task_status(first)
    body = status.model_dump_json()
    placeholder = status.placeholder
    if placeholder is not None:
        yield sse_event("placeholder", placeholder.model_dump_json(), event_id, retry_ms=RETRY_MILLISECONDS)
        event_id += 1
    yield sse_event("status", body, event_id, retry_ms=None if placeholder else RETRY_MILLISECONDS)
    final = first.status in FINAL_STATUSES
    started = last_write = time.monotonic()
    outage = False
    while not final and time.monotonic() - started < streams.lifetime_seconds:
        await asyncio.sleep(streams.poll_seconds)
        # Starlette cancels this generator when the client goes away; this check covers servers
        # that only report it when asked (ASGI spec 2.4).
        if await request.is_disconnected():
            return
        try:
            task = await _read_task(services, task_id)
        except tasks.DatabaseUnavailable as exc:
            # A passing outage: keep the stream (and its keep-alives) and look again next time.
            if not outage:
                log.warning("database unavailable while streaming task %s: %s", task_id, exc)
            outage = True
        else:
            outage = False
            if task is None:
                gone = json.dumps({"task_id": task_id, "detail": TASK_DELETED})
                yield sse_event("deleted", gone, event_id + 1)
                return
            status = task_status(task)
            latest = status.model_dump_json()
            if latest != body:
                if placeholder is None and status.placeholder is not None:
                    placeholder, event_id = status.placeholder, event_id + 1
                    yield sse_event("placeholder", placeholder.model_dump_json(), event_id)
                body, event_id = latest, event_id + 1
                final = task.status in FINAL_STATUSES
                yield sse_event("status", body, event_id)
                last_write = time.monotonic()
                continue
        if time.monotonic() - last_write >= streams.keepalive_seconds:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()


def _event_data(event: str, schema: dict[str, object]) -> dict[str, object]:
    return {
        "if": {"properties": {"event": {"const": event}}},
        "then": {"properties": {"data": {"contentSchema": schema}}},
    }


# One event of the stream (OpenAPI 3.2's `itemSchema`, which schemathesis checks each event against).
_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["status", "placeholder", "deleted"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0},
    },
    "allOf": [
        _event_data("status", {"$ref": "#/components/schemas/TaskStatusResponse"}),
        _event_data("placeholder", {"$ref": "#/components/schemas/PlaceholderResponse"}),
        _event_data(
            "deleted",
            {
                "type": "object",
                "required": ["task_id", "detail"],
                "properties": {"task_id": {"type": "integer"}, "detail": {"const": TASK_DELETED}},
            },
        ),
    ],
}
_EXAMPLE_STREAM = (
    'retry: 2000\nid: 1\nevent: status\ndata: {"task_id": 42, "status": "pending", ...}\n\n'
    'id: 2\nevent: status\ndata: {"task_id": 42, "status": "done", ...}\n\n'
)


@router.get(
    "/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`event: status` with the `GET /status/{task_id}` body as `data`, at once and on "
            "every change, until the task is `done`, `failed` or `cancelled`; `event: placeholder` with "
            "the task's "
            "`placeholder` once the worker has decoded the input, before the status that first shows it; "
            "`event: deleted` if it is deleted; "
            "`: keep-alive` comments meanwhile. A reconnecting client's `Last-Event-ID` is honoured.",
            "content": {"text/event-stream": {"itemSchema": _EVENT, "example": _EXAMPLE_STREAM}},
        },
        **errors(401, 404),
        429: error(
            "This API key holds the most live streams one key may.",
            TOO_MANY_STREAMS_FOR_KEY,
            headers=RETRY_AFTER,
        ),
        503: {
            **errors(503)[503],
            "description": "PostgreSQL cannot be reached, or this server has its most live streams open "
            "(poll `GET /status/{task_id}` instead). Try again after `Retry-After` seconds.",
        },
    },
)
async def task_events(
    request: Request, task: TaskDep, session: SessionDep, services: ServicesDep, caller: CallerDep
) -> StreamingResponse:
    """Server-Sent Events of the task's status until it is final (owner-scoped like /status)."""
    # The session that found the task would otherwise stay open (with its transaction) for as
    # long as the response streams: release it now; each poll opens its own.
    await session.close()
    streams: EventStreams = request.app.state.event_streams
    refusal = streams.take(caller)
    if refusal is not None:
        raise refusal
    events = _status_events(request, services, streams, task, _first_event_id(request))
    return EventStream(events, streams, caller)
