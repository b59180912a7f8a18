"""Reading a text/event-stream answer in tests: events one at a time, each within a deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: str | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class EventReader:
    """The events of one streaming response, parsed as a browser's EventSource would."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines: AsyncIterator[str] = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, *, timeout: float = 10) -> Event | None:
        """The next event, or None when the server ended the stream; fails after `timeout` s."""
        async with asyncio.timeout(timeout):
            event = Event()
            seen = False
            async for line in self._lines:
                if line == "":
                    if seen:
                        return event
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    self.comments.append(value)
                    continue
                seen = True
                if name == "data":
                    event.data = f"{event.data}\n{value}" if event.data else value
                elif name in ("event", "id", "retry"):
                    setattr(event, name, value)
            return None
