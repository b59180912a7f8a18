"""The hostile side of `bench.hostile`: every attack class of issue 14 at once, in a process of its own.

    python -m bench.hostile_attacks --port 8000 --seconds 60 [--mix '{"slowloris": 300, ...}']

Runs for `--seconds`, then closes everything and prints one JSON object: for each attack class the
connections (or requests) it made and how each was answered (a status code, a close without an
answer, a reset, still open at the end) with how long the server held it; for each cost bomb the
answers, their times, one answer's text and the task ids of any accepted. Its own CPU time is in
the output too, so the report can show what the attack cost the machine besides the server.

A process of its own: sending 64 MB heads and keeping a thousand sockets busy would otherwise slow
the measuring process's event loop and show up as the server's latency. Only 127.0.0.1 is a target.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import re
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from bench.load import HOST, _run, multipart_request
from tests import images


@dataclass(frozen=True)
class Mix:
    """How much of each attack runs at once (the defaults: issue 14's figures)."""

    slowloris: int = 300  # connections, each sending a header byte every 2 s
    slow_bodies: int = 50  # uploads, each sending a body byte a second
    idle: int = 1100  # connections that send nothing (past HTTP_MAX_CONNECTIONS' default, 1,000)
    header_bombs: int = 4  # connections at a time, each sending up to 64 MB of one header
    header_floods: int = 2  # connections at a time, each sending 20,000 headers
    cost_bombs_per_second: float = 2.0  # uploads, taking the kinds in turn
    slowloris_interval: float = 2.0
    slow_body_interval: float = 1.0


BOMB_HEADER_BYTES = 64 * 1024 * 1024
FLOOD_HEADERS = 20_000
# A cost bomb's answer can take long when the API is busy; after this it counts as unanswered.
ANSWER_TIMEOUT = 60.0
MAX_COST_BOMBS_IN_FLIGHT = 20
# The 71-byte PNG of the issue: enlarged to 16,384 × 16,384, then shrunk back.
ENLARGE_AND_BACK = [
    {"op": "resize", "width": 16384, "height": 16384, "mode": "exact"},
    {"op": "resize", "width": 64, "height": 64, "mode": "exact"},
]
# 2,000,000 empty chunks: 24 MB, within MAX_UPLOAD_BYTES' default (25 MiB).
PNG_EMPTY_CHUNKS = 2_000_000
JPEG_EXTRA_SCANS = 3_000
_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")


@dataclass
class Tally:
    """What one attack class met: an outcome per connection, and how long each was held."""

    opened: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    held: list[float] = field(default_factory=list)
    sent_bytes: list[int] = field(default_factory=list)

    def record(self, outcome: str, started: float, sent: int | None = None) -> None:
        self.outcomes[outcome] += 1
        self.held.append(time.monotonic() - started)
        if sent is not None:
            self.sent_bytes.append(sent)

    def summary(self) -> dict[str, Any]:
        held = sorted(self.held)
        return {
            "opened": self.opened,
            "outcomes": dict(self.outcomes.most_common()),
            "held_p50_seconds": held[len(held) // 2] if held else None,
            "held_max_seconds": held[-1] if held else None,
            "sent_bytes_max": max(self.sent_bytes) if self.sent_bytes else None,
        }


def _answer_label(received: bytes, error: BaseException | None) -> str:
    match = _STATUS.match(received)
    if match:
        return match.group(1).decode()
    if error is not None:
        return f"{type(error).__name__}, no answer"
    return "closed without an answer"


async def _until_closed(reader: asyncio.StreamReader) -> str:
    """Read what the server sends until it closes; the answer's status code, or how it ended."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk[: max(0, 4096 - len(received))]
    except OSError as exc:
        return _answer_label(received, exc)
    return _answer_label(received, None)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)


async def _tallied_connection(
    port: int, tally: Tally, started: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A new connection counted in `tally`; None (recorded, after a pause) if none could be made."""
    try:
        connection = await _connect(port)
    except (OSError, TimeoutError) as exc:
        tally.record(f"connect failed ({type(exc).__name__})", started)
        await asyncio.sleep(0.5)
        return None
    tally.opened += 1
    return connection


async def _held_connection(
    port: int,
    tally: Tally,
    head: bytes,
    drip: bytes,
    interval: float,
    end: float,
    *,
    classify: Callable[[str, float], str] | None = None,
) -> None:
    """One slot of a slow attack: connect, send `head`, then `drip` every `interval` s until the
    server closes; again until `end`. What the server did each time goes to `tally`."""
    while time.monotonic() < end:
        started = time.monotonic()
        connection = await _tallied_connection(port, tally, started)
        if connection is None:
            continue
        reader, writer = connection

        async def dripping(writer: asyncio.StreamWriter = writer) -> None:
            with contextlib.suppress(OSError):
                if head:
                    writer.write(head)
                    await writer.drain()
                while drip:
                    await asyncio.sleep(interval)  # the attack's pace
                    writer.write(drip)
                    await writer.drain()
                await asyncio.Event().wait()

        sender = asyncio.create_task(dripping())
        closed = asyncio.create_task(_until_closed(reader))
        try:
            done, _ = await asyncio.wait({closed}, timeout=max(0.0, end - time.monotonic()))
            if not done:
                tally.record("still open at the end", started)
                closed.cancel()
                return
            outcome = closed.result()
            if classify is not None:
                outcome = classify(outcome, time.monotonic() - started)
            tally.record(outcome, started)
        finally:
            sender.cancel()
            writer.close()


async def _bomb(port: int, tally: Tally, head: bytes, body: bytes, repeat: int, end: float) -> None:
    """One slot of a header bomb: send `head`, then `body` `repeat` times (or until the server
    closes), and read the answer; again until `end`."""
    while time.monotonic() < end:
        started = time.monotonic()
        connection = await _tallied_connection(port, tally, started)
        if connection is None:
            continue
        reader, writer = connection
        sent = 0
        answer = asyncio.create_task(_until_closed(reader))
        try:
            with contextlib.suppress(OSError):
                writer.write(head)
                sent += len(head)
                for _ in range(repeat):
                    if answer.done() or time.monotonic() > end:
                        break
                    writer.write(body)
                    await writer.drain()
                    sent += len(body)
            try:
                outcome = await asyncio.wait_for(answer, max(1.0, end - time.monotonic()))
            except TimeoutError:
                outcome = "still open at the end"
            tally.record(outcome, started, sent)
        finally:
            writer.close()


@dataclass
class CostBomb:
    request: bytes
    upload_bytes: int
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: list[float] = field(default_factory=list)
    sample: dict[str, str] = field(default_factory=dict)
    task_ids: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        seconds = sorted(self.seconds)
        return {
            "upload_bytes": self.upload_bytes,
            "sent": sum(self.answers.values()),
            "answers": dict(self.answers.most_common()),
            "answer_p50_seconds": seconds[len(seconds) // 2] if seconds else None,
            "answer_max_seconds": seconds[-1] if seconds else None,
            "sample": self.sample,
            "task_ids": self.task_ids,
        }


def _gif(frames: int) -> bytes:
    pictures = [Image.new("L", (1, 1), 255 * (index % 2)) for index in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "GIF", save_all=True, append_images=pictures[1:], duration=40)
    return buffer.getvalue()


def cost_bombs(port: int) -> dict[str, CostBomb]:
    """Each cost bomb of issue 14 as a ready request (built once)."""
    tiny_png = images.encode(Image.new("L", (1, 1)), "PNG")
    files: dict[str, tuple[bytes, dict[str, Any]]] = {
        f"{len(tiny_png)}-byte PNG enlarged to 16,384² and back": (tiny_png, {"ops": ENLARGE_AND_BACK}),
        "8-frame 1×1 GIF resized to 2,000×2,000": (
            _gif(8),
            {"ops": [{"op": "resize", "width": 2000, "height": 2000, "mode": "exact"}]},
        ),
        f"PNG of {PNG_EMPTY_CHUNKS:,} empty chunks": (images.png_with_empty_chunks(PNG_EMPTY_CHUNKS), {}),
        "ops nested 1,000 brackets deep": (images.png(), {"ops": "[" * 1000 + "]" * 1000}),
        f"progressive JPEG of {JPEG_EXTRA_SCANS + 10:,} scans": (
            images.jpeg_with_scans(JPEG_EXTRA_SCANS, 256, 256),
            {},
        ),
    }
    return {
        name: CostBomb(
            multipart_request(
                "/upload",
                port,
                data,
                filename="upload",
                fields={k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()},
            ),
            len(data),
        )
        for name, (data, fields) in files.items()
    }


async def _send_cost_bomb(port: int, bomb: CostBomb) -> None:
    started = time.monotonic()
    try:
        reader, writer = await _connect(port)
    except (OSError, TimeoutError) as exc:
        bomb.answers[f"connect failed ({type(exc).__name__})"] += 1
        return
    try:
        writer.write(bomb.request)
        async with asyncio.timeout(ANSWER_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
            body = await reader.readexactly(int(length.group(1))) if length else b""
        status = _answer_label(head, None)
        bomb.seconds.append(time.monotonic() - started)
        bomb.answers[status] += 1
        bomb.sample.setdefault(status, body[:300].decode(errors="replace"))
        if status == "200":
            task = re.search(rb'"task_id":\s*(\d+)', body)
            if task:
                bomb.task_ids.append(int(task.group(1)))
    except TimeoutError:
        bomb.answers[f"no answer within {ANSWER_TIMEOUT:g} s"] += 1
    except (OSError, asyncio.IncompleteReadError) as exc:
        bomb.answers[f"{type(exc).__name__}, no answer"] += 1
    finally:
        writer.close()


async def _cost_bombing(port: int, bombs: dict[str, CostBomb], per_second: float, end: float) -> None:
    """The kinds in turn at `per_second`, each in a task of its own (a slow answer does not slow
    the pace), at most MAX_COST_BOMBS_IN_FLIGHT unanswered."""
    kinds = list(bombs.values())
    in_flight: set[asyncio.Task] = set()
    index = 0
    next_at = time.monotonic()
    while time.monotonic() < end:
        if len(in_flight) < MAX_COST_BOMBS_IN_FLIGHT:
            task = asyncio.create_task(_send_cost_bomb(port, kinds[index % len(kinds)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            index += 1
        next_at += 1 / per_second
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if in_flight:
        await asyncio.wait(in_flight, timeout=ANSWER_TIMEOUT)


async def attack(port: int, seconds: float, mix: Mix, header_timeout: float) -> dict[str, Any]:
    end = time.monotonic() + seconds
    tallies = {
        name: Tally() for name in ("slowloris", "slow bodies", "64 MB heads", "20,000 headers", "idle")
    }
    bombs = cost_bombs(port)

    def early_close(outcome: str, held: float) -> str:
        # The header deadline closes a head (silently if nothing came); before it, only the
        # connection cap does, making room for a newcomer.
        if outcome == "closed without an answer":
            return "closed at the header deadline" if held >= header_timeout - 0.5 else "closed early (cap)"
        return outcome

    upload_head = (
        b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=hostileboundary\r\nContent-Length: 500000\r\n\r\n"
        b'--hostileboundary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    )
    chunk = b"a" * 65536
    flood = b"".join(b"X-H%d: 1\r\n" % index for index in range(FLOOD_HEADERS)) + b"\r\n"

    async def staggered(count: int, spread: float, slot: Callable[[], Awaitable[None]]) -> None:
        """`count` slots, started evenly over `spread` seconds (a burst of connects is not the test)."""

        async def later(delay: float) -> None:
            await asyncio.sleep(delay)
            await slot()

        await asyncio.gather(*(later(spread * index / max(count, 1)) for index in range(count)))

    jobs = [
        staggered(
            mix.slowloris,
            mix.slowloris_interval,
            lambda: _held_connection(
                port,
                tallies["slowloris"],
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
                b"a",
                mix.slowloris_interval,
                end,
                classify=early_close,
            ),
        ),
        staggered(
            mix.slow_bodies,
            mix.slow_body_interval,
            lambda: _held_connection(
                port, tallies["slow bodies"], upload_head, b"a", mix.slow_body_interval, end
            ),
        ),
        staggered(
            mix.idle,
            2.0,
            lambda: _held_connection(port, tallies["idle"], b"", b"", 0, end, classify=early_close),
        ),
        staggered(
            mix.header_bombs,
            1.0,
            lambda: _bomb(
                port,
                tallies["64 MB heads"],
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bomb: ",
                chunk,
                BOMB_HEADER_BYTES // len(chunk),
                end,
            ),
        ),
        staggered(
            mix.header_floods,
            1.0,
            lambda: _bomb(
                port, tallies["20,000 headers"], b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", flood, 1, end
            ),
        ),
    ]
    if mix.cost_bombs_per_second > 0:
        jobs.append(_cost_bombing(port, bombs, mix.cost_bombs_per_second, end))
    await asyncio.gather(*jobs)
    return {
        "connections": {name: tally.summary() for name, tally in tallies.items()},
        "cost_bombs": {name: bomb.summary() for name, bomb in bombs.items()},
    }


def _raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--mix", default="{}", help="JSON object of Mix fields to change")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="the API's HTTP_HEADER_TIMEOUT")
    args = parser.parse_args()
    mix = Mix(**json.loads(args.mix))
    _raise_open_files(2 * (mix.slowloris + mix.slow_bodies + mix.idle) + 256)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = _run(attack(args.port, args.seconds, mix, args.header_timeout))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["mix"] = asdict(mix)
    result["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
