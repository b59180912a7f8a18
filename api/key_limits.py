"""Per-key upload limits at the door: every ingest path asks `admit_upload` before it reads a byte
of the body, so a key over its limit costs one statement, not an upload, and after every check
that needs no body (headers, fields known already, open-upload counts), so a request refused for
one of those costs no quota. The decision is
core.key_limits' (in PostgreSQL, shared by every API replica); this module turns it into the
answer: 429 with Retry-After, 403 for a key whose limit is 0, and the IETF draft's RateLimit-Policy
and RateLimit fields on refusals and admitted uploads alike.

An upload whose Idempotency-Key a task already holds is not counted: it can only be answered from
that task (a replay: a client retrying an answer it lost) or refused (422, the key reused for a
different upload), so it makes nothing. Its answer carries no RateLimit fields (nothing was decided).
Two requests with one new key at the same moment are both counted (the second then replays)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import HTTPException

from api.openapi import RETRY_AFTER, error
from api.state import Services
from core import key_limits, tasks
from core.api_keys import KeyPolicy
from core.key_limits import Refusal, Verdict

UPLOADS_PER_MINUTE_REACHED = (
    "This API key has used its {limit} uploads a minute; the next is accepted in {seconds} s."
)
MAX_PENDING_REACHED = (
    "This API key already has {limit} images waiting or in processing, its most (max_pending); "
    "upload more once some are done."
)
UPLOADS_FORBIDDEN = "This API key may not upload images (its {setting} is 0)."
# When a pending task finishes cannot be known at the door: a hint, not a promise.
PENDING_RETRY_SECONDS = 5


# How /docs describes the fields (api/routes/tasks.py declares them on the upload's answers).
LIMIT_FIELDS = {
    "RateLimit-Policy": {
        "description": "With a key that has limits: its quota policies (IETF httpapi-ratelimit-headers), "
        '`"minute";q=<uploads_per_minute>;w=60` and `"pending";q=<max_pending>;qu="concurrent-requests"`.',
        "schema": {"type": "string"},
        "example": '"minute";q=60;w=60',
    },
    "RateLimit": {
        "description": "With a key that has limits: what is left under each policy, `r` uploads, and for "
        "`minute` `t`, the seconds within which no more than `r` can be made.",
        "schema": {"type": "string"},
        "example": '"minute";r=59;t=1',
    },
}
UPLOAD_ANSWERS: dict[int | str, dict[str, Any]] = {
    403: error(
        "The API key's uploads_per_minute or max_pending is 0: it may not upload.",
        UPLOADS_FORBIDDEN.format(setting="uploads_per_minute"),
        headers=LIMIT_FIELDS,
    ),
    429: error(
        "The API key is over its uploads_per_minute or max_pending; nothing was read or stored.",
        UPLOADS_PER_MINUTE_REACHED.format(limit=60, seconds=12),
        headers={**RETRY_AFTER, **LIMIT_FIELDS},
    ),
}


def limit_headers(verdict: Verdict | None) -> dict[str, str]:
    """The RateLimit-Policy and RateLimit fields for a verdict (none for a key without limits)."""
    if verdict is None:
        return {}
    return {"RateLimit-Policy": verdict.quota_policies(), "RateLimit": verdict.service_limits()}


def _refusal(verdict: Verdict) -> HTTPException:
    # Answered with the body unread: the HTTP layer's lingering close (api.http_limits) ends the
    # connection after the client can read it, dropping what the client still sends.
    policy = verdict.policy
    headers = limit_headers(verdict)
    if verdict.refusal is Refusal.FORBIDDEN:
        setting = "uploads_per_minute" if policy.uploads_per_minute == 0 else "max_pending"
        return HTTPException(403, UPLOADS_FORBIDDEN.format(setting=setting), headers)
    if verdict.refusal is Refusal.RATE:
        assert verdict.rate_wait is not None
        # Rounded up: a client that waits Retry-After seconds finds the next upload admitted.
        seconds = max(math.ceil(verdict.rate_wait), 1)
        message = UPLOADS_PER_MINUTE_REACHED.format(limit=policy.uploads_per_minute, seconds=seconds)
        return HTTPException(429, message, {**headers, "Retry-After": str(seconds)})
    message = MAX_PENDING_REACHED.format(limit=policy.max_pending)
    return HTTPException(429, message, {**headers, "Retry-After": str(PENDING_RETRY_SECONDS)})


async def admit_upload(
    services: Services, key: KeyPolicy | None, *, idempotency_key: str | None = None
) -> Verdict | None:
    """Count one upload against the caller's key, or refuse it (HTTPException: 429 or 403, with the
    headers). None when the key has no limits, or keys are off, or `idempotency_key` (as stored) is
    held by a task already (a replay). Call it before reading the body."""
    if key is None or not key.limited:
        return None
    if idempotency_key is not None:
        async with services.sessions() as session:
            if await tasks.idempotency_key_used(session, idempotency_key):
                return None
    verdict = await key_limits.admit(services.driver_pool, key)
    if verdict is not None and not verdict.admitted:
        raise _refusal(verdict)
    return verdict
