"""Upload progress on stderr, so stdout carries only the results a program may parse.

On a terminal: a live view redrawn in place (ANSI cursor movement, at most ten times a second),
one line per file being sent with its bytes so far, and a line of overall counts. Anywhere else
(a pipe, a log file, CI): one plain line per event, never a carriage-return smear.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TextIO

REDRAW_SECONDS = 0.1
BAR_WIDTH = 20
NAME_WIDTH = 28


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


@dataclass
class _Sending:
    name: str
    size: int
    sent: int = 0


class Progress:
    def __init__(self, stream: TextIO, total: int, *, live: bool | None = None) -> None:
        self._stream = stream
        self._total = total
        self._live = stream.isatty() if live is None else live
        self._sending: dict[int, _Sending] = {}
        self._uploaded = self._refused = self._done = self._failed = 0
        self._waiting = False
        self._drawn = 0
        self._last_draw = 0.0

    def start(self, key: int, name: str, size: int) -> None:
        self._sending[key] = _Sending(name, size)
        self._draw(force=True)

    def advance(self, key: int, sent: int) -> None:
        """`sent` more bytes of file `key` went out (called for every chunk read from disk)."""
        self._sending[key].sent += sent
        self._draw()

    def uploaded(self, key: int, task_id: int) -> None:
        file = self._sending.pop(key)
        self._uploaded += 1
        # A URL import sends no file of its own: no size to show.
        size = f" ({human_bytes(file.size)})" if file.size else ""
        self._event(f"uploaded {file.name}{size} as task {task_id}")

    def refused(self, key: int, name: str, reason: str) -> None:
        self._sending.pop(key, None)
        self._refused += 1
        self._event(f"refused {name}: {reason}")

    def waiting(self) -> None:
        """From now on the counts include tasks finished (`--wait`)."""
        self._waiting = True

    def finished(self, name: str, task_id: int, status: str, error: str | None) -> None:
        if status == "done":
            self._done += 1
        else:
            self._failed += 1
        self._event(f"{status} {name} (task {task_id})" + (f": {error}" if error else ""))

    def close(self) -> None:
        if self._live:
            self._draw(force=True)
        else:
            self._stream.write(self._summary() + "\n")
        self._stream.flush()

    def _summary(self) -> str:
        summary = f"{self._uploaded}/{self._total} uploaded"
        if self._refused:
            summary += f", {self._refused} refused"
        if self._waiting:
            summary += f", {self._done} done, {self._failed} failed"
        return summary

    def _event(self, line: str) -> None:
        if self._live:
            self._clear()
            self._stream.write(line + "\n")
            self._draw(force=True)
        else:
            self._stream.write(line + "\n")
            self._stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            # Up to the first line we drew, then erase to the end of the screen.
            self._stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, *, force: bool = False) -> None:
        if not self._live:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        self._clear()
        lines = [self._line(file) for file in self._sending.values()]
        lines.append(self._summary())
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()
        self._drawn = len(lines)

    @staticmethod
    def _line(file: _Sending) -> str:
        share = min(file.sent / file.size, 1.0) if file.size else 1.0
        filled = round(share * BAR_WIDTH)
        name = file.name if len(file.name) <= NAME_WIDTH else file.name[: NAME_WIDTH - 1] + "…"
        return (
            f"{name:<{NAME_WIDTH}} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {share:4.0%} "
            f"{human_bytes(file.sent)} / {human_bytes(file.size)}"
        )
