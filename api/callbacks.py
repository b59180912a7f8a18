"""Delivering callbacks: when a task with a `callback_url` ends, POST its status body there, signed.

Delivery is durable and at least once. Finishing a task (worker or lease sweep) marks its callback
`pending` and due (core.tasks); every API process runs this sender, which claims
due deliveries with `FOR UPDATE SKIP LOCKED` by moving their due time forward (so no row lock is
held while the receiver answers, and a process killed mid-delivery hands it on), POSTs, then
records `delivered`, or the next try after a doubling delay, or `failed` after
WEBHOOK_MAX_ATTEMPTS tries. Receivers must accept a repeat (`X-Imagequeue-Delivery` names it).

Signature (header `X-Imagequeue-Signature: t=<unix time>,v1=<hex>`): HMAC-SHA256 with
WEBHOOK_SECRET over `<t>.<raw body>`. A receiver recomputes it and compares in constant time, and
refuses an old `t` to stop replays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.callback_urls import CallbackRefused, vet_callback_url
from api.schemas import task_status
from core import loops, tasks, tracing
from core.models import ImageTask

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Imagequeue-Signature"
BATCH = 20
POLL_SECONDS = 1.0
# A claimed delivery is retried by any process after this long (its sender may have died).
CLAIM_SECONDS = 120
MAX_RETRY_DELAY_SECONDS = 3600
USER_AGENT = "imagequeue-callback/1"


@dataclass(frozen=True)
class CallbackPolicy:
    secret: str
    allow_private: bool
    max_attempts: int
    retry_seconds: float
    timeout_seconds: float


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay(policy: CallbackPolicy, attempts: int) -> float:
    """Seconds before try `attempts + 1`: retry_seconds, doubled after each failure, capped."""
    return min(policy.retry_seconds * 2 ** (attempts - 1), MAX_RETRY_DELAY_SECONDS)


class CallbackSender:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], policy: CallbackPolicy) -> None:
        self._sessions = sessions
        self._policy = policy
        self._background = loops.Background("callback sender")
        self._http = httpx.AsyncClient(
            timeout=policy.timeout_seconds,
            follow_redirects=False,  # a redirect could lead anywhere, past the address check
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # no proxy from the environment: the address check must hold
        )

    def start(self) -> None:
        stop = self._background.stop
        self._background.start(
            loops.every(POLL_SECONDS, self._deliver_all, stop=stop, what="callback delivery"),
            name="callback-sender",
        )

    async def close(self) -> None:
        await self._background.close()
        await self._http.aclose()

    async def _deliver_all(self) -> None:
        while await self.deliver_due() == BATCH:
            pass

    async def deliver_due(self) -> int:
        """Claim and deliver the callbacks due now; returns how many were tried."""
        async with self._sessions() as session:
            claimed = await tasks.claim_due_callbacks(
                session, limit=BATCH, hold=timedelta(seconds=CLAIM_SECONDS)
            )
        if not claimed:
            return 0
        outcomes = await asyncio.gather(*(self._deliver(task) for task in claimed))
        for task, error in zip(claimed, outcomes, strict=True):
            await self._record(task, error)
        return len(claimed)

    async def _deliver(self, task: ImageTask) -> str | None:
        """POST the task's status; None on a 2xx answer, else why it failed (for the row). Traced in
        the task's trace (a CLIENT span under its upload span), whichever API process sends it."""
        assert task.callback_url is not None
        attributes: dict[str, tracing.AttributeValue] = {
            "http.request.method": "POST",
            tracing.TASK_ID: task.id,
            "imagequeue.callback.attempt": task.callback_attempts,
        }
        with tracing.span(
            "POST", kind=tracing.SpanKind.CLIENT, attributes=attributes, parent=task.traceparent
        ):
            error = await self._post(task, task.callback_url)
            if error is not None:
                tracing.fail(error)
            return error

    async def _post(self, task: ImageTask, callback_url: str) -> str | None:
        try:
            target = await vet_callback_url(callback_url, allow_private=self._policy.allow_private)
        except CallbackRefused as exc:
            return str(exc)
        # The host, not the full URL: its path or query may hold the receiver's token.
        tracing.annotate(**{"server.address": target.host})
        body = task_status(task).model_dump_json().encode()
        host_header, extensions = target.request_options()
        headers = {
            **host_header,
            "Content-Type": "application/json",
            "X-Imagequeue-Event": f"task.{task.status}",
            "X-Imagequeue-Delivery": f"{task.id}-{task.callback_attempts}",
            SIGNATURE_HEADER: sign(self._policy.secret, int(time.time()), body),
        }
        traceparent = tracing.current_traceparent()
        if traceparent is not None:  # the receiver may carry the trace on
            headers[tracing.TRACEPARENT] = traceparent
        try:
            async with self._http.stream(
                "POST",
                target.pinned_url(),
                content=body,
                headers=headers,
                extensions=extensions,
            ) as response:
                status = response.status_code
            tracing.annotate(**{"http.response.status_code": status})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        if 200 <= status < 300:
            return None
        return f"the receiver answered {status}"

    async def _record(self, task: ImageTask, error: str | None) -> None:
        attempts = task.callback_attempts
        retry_in: timedelta | None = None
        if error is None:
            log.info("task %s: callback delivered (try %d)", task.id, attempts)
        elif attempts >= self._policy.max_attempts:
            log.warning("task %s: callback failed for good after %d tries: %s", task.id, attempts, error)
        else:
            retry_in = timedelta(seconds=retry_delay(self._policy, attempts))
            log.info("task %s: callback try %d failed (%s); next in %s", task.id, attempts, error, retry_in)
        async with self._sessions() as session:
            await tasks.record_callback(session, task.id, error=error, retry_in=retry_in)
