"""A burst of uploads kept in flight while a test breaks something, and what each upload got back.

Several clients upload small JPEGs one after another until the burst is stopped, so whatever the
test does to a server or a process happens with requests in every stage of their life. Each upload
carries a display name starting with the burst's prefix: the rows it created can be found even when
the answer never arrived (a killed API commits rows whose requests are cut off).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass
from types import TracebackType

import httpx

from tests import images
from tests.waiting import eventually

# A connection cut, refused or reset: the answer to a request whose API process died or stopped.
# A timeout is not one of them: a request that hangs is a failure of its own.
CONNECTION_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Outcome:
    """One upload: its HTTP answer, or the connection error it got instead."""

    name: str
    status: int | None = None
    body: dict | str | None = None
    error: str | None = None

    @property
    def task_id(self) -> int | None:
        return self.body["task_id"] if self.status == 200 and isinstance(self.body, dict) else None


def new_prefix(label: str) -> str:
    return f"fault-{label}-{uuid.uuid4().hex[:12]}"


class Burst:
    """`concurrency` clients uploading to `base_url` back to back (with `pause` between their own
    uploads, to keep the number of tasks modest) until the `async with` block ends."""

    def __init__(
        self, base_url: str, prefix: str, *, concurrency: int = 8, pause: float = 0.15, timeout: float = 30
    ) -> None:
        self.prefix = prefix
        self.outcomes: list[Outcome] = []
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._concurrency = concurrency
        self._pause = pause
        self._image = images.jpeg(160, 120)
        self._numbers = itertools.count()
        self._stop = asyncio.Event()
        self._clients: list[asyncio.Task] = []

    async def __aenter__(self) -> Burst:
        self._clients = [asyncio.create_task(self._upload_until_stopped()) for _ in range(self._concurrency)]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        try:
            await asyncio.gather(*self._clients)
        finally:
            await self._client.aclose()

    async def wait_for_more(self, count: int, *, timeout: float = 30) -> list[Outcome]:
        """Wait until `count` more uploads have an outcome than now; returns those outcomes."""
        start = len(self.outcomes)

        async def ended() -> bool:
            if len(self.outcomes) >= start + count:
                return True
            assert not any(task.done() for task in self._clients), "an upload client died"
            return False

        await eventually(
            ended, timeout=timeout, what=lambda: f"only {len(self.outcomes) - start} of {count} uploads ended"
        )
        return self.outcomes[start:]

    async def wait_for_errors(self, count: int, *, timeout: float = 30) -> None:
        """Wait until `count` uploads in all have ended in a connection error."""

        async def enough() -> bool:
            return self.errors >= count

        await eventually(
            enough, timeout=timeout, what=lambda: f"only {self.errors} of {count} connection errors"
        )

    @property
    def accepted(self) -> set[int]:
        return {outcome.task_id for outcome in self.outcomes if outcome.task_id is not None}

    def unexpected(self, *, allowed_statuses: set[int], connection_errors: bool = False) -> list[Outcome]:
        """Outcomes outside what the scenario allows: the ones a test reports when it fails."""
        return [
            outcome
            for outcome in self.outcomes
            if outcome.status not in allowed_statuses
            and not (outcome.error is not None and connection_errors)
        ]

    @property
    def errors(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.error is not None)

    async def _upload_until_stopped(self) -> None:
        while not self._stop.is_set():
            name = f"{self.prefix}-{next(self._numbers)}.jpg"
            self.outcomes.append(await self._upload(name))
            # Not synchronisation: pacing, so a burst makes tens of tasks rather than thousands.
            await asyncio.sleep(self._pause)

    async def _upload(self, name: str) -> Outcome:
        try:
            response = await self._client.post("/upload", files={"file": (name, self._image, "image/jpeg")})
        except CONNECTION_ERRORS as exc:
            return Outcome(name, error=f"{type(exc).__name__}: {exc}")
        try:
            body: dict | str = response.json()
        except ValueError:
            body = response.text[:500]
        return Outcome(name, status=response.status_code, body=body)
