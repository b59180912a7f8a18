"""Dependency-injection glue: the only place routes get services, callers, sessions and tasks from."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.state import Services
from core import tasks
from core.api_keys import KeyPolicy, fingerprint
from core.models import MAX_TASK_ID, ImageTask

TASK_NOT_FOUND = "Task not found"
API_KEY_REQUIRED = "A valid X-API-Key header is required."


# The dependencies below that do no I/O are `async def` on purpose: FastAPI runs a plain `def`
# dependency in anyio's thread pool (40 threads, then shared with the uploads' fsync and probe),
# which cost every request two thread hops and, at 64 concurrent uploads, ~85 ms each queued for a
# thread; a hop costs about 0.6 ms of CPU in GIL hand-overs (core/storage/group_sync.py).
async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

# A plain optional header rather than a security scheme: OpenAPI cannot say "required only when the
# server sets API_KEYS", and a scheme would tell clients (and /docs) that every call needs a key.
_API_KEY_HEADER = Header(
    alias="X-API-Key",
    description="Required when the server sets API_KEYS; each key sees only the tasks it uploaded.",
)


key_fingerprint = fingerprint


async def get_key(
    services: ServicesDep, presented: Annotated[str | None, _API_KEY_HEADER] = None
) -> KeyPolicy | None:
    """The caller's key and its policy, None when API keys are off; 401 for a missing or unknown key."""
    policies = services.settings.api_keys
    if not policies:
        return None
    # Compare against every key, in constant time, so timing reveals neither a key nor its position.
    found = None
    if presented:
        for policy in policies:
            if hmac.compare_digest(presented.encode(), policy.key.encode()):
                found = policy
    if found is None:
        # An upload's body may still be unread: the HTTP layer's lingering close (api.http_limits)
        # lets the client read this answer before the connection goes.
        raise HTTPException(status_code=401, detail=API_KEY_REQUIRED, headers={"WWW-Authenticate": "ApiKey"})
    return found


KeyDep = Annotated[KeyPolicy | None, Depends(get_key)]


async def get_caller(key: KeyDep) -> str | None:
    """The caller's key fingerprint, None when API keys are off (FastAPI resolves `get_key` once a
    request, however many dependencies ask for it)."""
    return None if key is None else fingerprint(key.key)


CallerDep = Annotated[str | None, Depends(get_caller)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    # A session takes a pooled connection only at its first query, not while a body streams in.
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def visible_task(session: AsyncSession, task_id: int, caller: str | None) -> ImageTask | None:
    """The task, if it exists and the caller may see it. An id that no task can have (0, negative,
    beyond the column's integer) is simply not found, without asking the database."""
    if not 1 <= task_id <= MAX_TASK_ID:
        return None
    task = await tasks.get(session, task_id)
    # Another key's task is answered exactly like a missing one: ids reveal nothing.
    if task is None or (caller is not None and task.owner != caller):
        return None
    return task


# Any whole number is a well-formed id (404 when no task has it, as the original design answered);
# only a path segment that is not a number is a malformed request (422).
_TASK_ID = Path(description="The task's id (`task_id` in the upload's answer).", examples=[42])


async def get_task(task_id: Annotated[int, _TASK_ID], session: SessionDep, caller: CallerDep) -> ImageTask:
    task = await visible_task(session, task_id, caller)
    if task is None:
        raise HTTPException(status_code=404, detail=TASK_NOT_FOUND)
    return task


TaskDep = Annotated[ImageTask, Depends(get_task)]
