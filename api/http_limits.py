"""HTTP limits uvicorn does not have: how long and how large a request head may be, how long a body may
stall, and how many connections one API process keeps.

uvicorn's own settings bound none of these (its keep-alive timer runs only between requests, and
httptools buffers a header of any size), so a few slow or oversized requests could hold every socket,
temp file and megabyte of the API. `limited_protocol(limits)` returns uvicorn's httptools protocol
(what `http="auto"` picks with uvicorn[standard]) with these limits added; `api.serve` passes it to
uvicorn as its `http` class.

What a client sees (the README's "Security limits" table):
- a head (request line and headers) over `max_header_bytes`, or with over `max_headers` headers:
  431, connection closed;
- a head not complete `header_timeout` seconds after its first byte (or after the connection opened):
  408 (or a silent close if nothing was sent), connection closed;
- no body bytes for `body_idle_timeout` seconds while the server waits for them (a stalled upload,
  or a body shorter than its Content-Length), or a body slower on average than `body_min_rate`
  bytes a second after that grace (a trickle that is never quite idle): 408 if no answer was
  started, connection closed; the application sees a disconnect, so the upload's temp file is
  removed. Time the application keeps the client waiting (not reading yet) is not counted;
- a request answered before its body was read (a 401, 404, 413 refusal): the answer, which says
  `Connection: close` (RFC 9112 §9.6: a client must not send another request on it), then the end
  of the connection (FIN); what the client still sends is dropped for up to LINGER_SECONDS and
  LINGER_BYTES, then the connection is closed, so the client can read the answer;
- a new connection beyond `max_connections`: the longest-idle connection that is between requests
  or still sending its head is closed to make room; if every one is inside a request, the new one
  gets 503 and is closed. So /health stays answerable under a flood of idle connections.

One thing uvicorn's httptools protocol gets wrong is fixed here too: a request that offers an upgrade
other than a WebSocket (`Upgrade: h2c` from `curl --http2` or Java's HttpClient on plain HTTP) lost
its body. httptools tells llhttp to skip the body of any upgrade request and stops parsing there;
uvicorn declines the upgrade but hands the application an empty body, and parses what follows as a
new request (uvicorn issue #2722). Here such a request is served as the HTTP/1.1 request it also is
(RFC 9110 §7.8 lets a server ignore an upgrade offer): its head, without `Upgrade`, is replayed into
a fresh parser, silently, and its body parsed from there, within the same limits.
"""

from __future__ import annotations

import asyncio
import http
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

if TYPE_CHECKING:  # uvicorn's own name for what its cycle's send takes
    from uvicorn._types import ASGISendEvent

# How often a body being read is checked against its limits (so they act up to this much late).
BODY_CHECK_SECONDS = 0.5
HEAD_TOO_LARGE = "Request header fields too large."
HEAD_TIMEOUT = "The request headers were not received in time."
BODY_TIMEOUT = "The request body stalled."
TOO_MANY_CONNECTIONS = "Too many connections; try again shortly."
# After answering a request whose body was left unread (a 401, 404, or any upload refused before
# its body was read: 413 by its declared length, 422 at its first bytes), what still arrives is read
# and dropped for up to this long and this much before the socket is closed: closing with unread
# bytes makes the kernel send a reset, which destroys the answer in the client's buffer before it
# reads it (httpx and requests send their whole body before reading: they see a connection error
# instead of the 413). The same bounded "lingering close" as nginx's, which bounds it by time alone;
# the bytes are bounded too, high enough that an upload of a few times MAX_UPLOAD_BYTES's default
# (a 30 MB photo against 25 MB) is drained and answered on a fast link, not reset at 8 MB as it was.
# Nothing dropped is kept: memory stays bounded by the read buffer.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_idle_timeout: float
    body_min_rate: int
    max_connections: int


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limits."""


def limited_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol class, bounded by `limits` (a class per limits, since uvicorn
    builds protocols from the class and its own Config only)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: HttpLimits

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The head being received: its size as the parser reported it and as bytes fed; None between
        # heads (in a body, or waiting for the next request).
        self._head_bytes: int | None = None
        self._head_fed = 0
        self._head_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_body = False
        self._body_timer: asyncio.TimerHandle | None = None
        # The body's clock: when the last byte came, the time it has been waited for on the
        # client's account (not while the application was not reading), and its size so far.
        self._body_last_byte = 0.0
        self._body_waited = 0.0
        self._body_bytes = 0
        # A chunk's header came and none of its data since: the last chunk's, if trailer fields
        # follow, which httptools keeps (each one whole, by repeated concatenation) until its end.
        self._after_chunk_header = False
        self._trailer_fed = 0
        # When this connection last became idle (between requests): the eviction order.
        self._idle_since = time.monotonic()
        # An upgrade offer is being declined: its message "completed" without its body (see the
        # module docstring), or its head is being replayed into a fresh parser.
        self._declining_upgrade = False
        self._replaying_head = False
        # Answered with the body unread: the bytes still allowed in before the close (see LINGER_*).
        self._linger_bytes_left: int | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        # An answer has said `Connection: close` (see _ClosingCycle): the connection ends with it.
        self._close_after_response = False

    # --- connections ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is a head that never arrives.
        self._start_head()
        if len(self.connections) > self.limits.max_connections and not self._evict_an_idle_one():
            self._refuse(503, TOO_MANY_CONNECTIONS)

    def _evict_an_idle_one(self) -> bool:
        """Close the longest-idle connection that is between requests or still in its head."""
        idle = [
            other
            for other in self.connections
            if other is not self
            and isinstance(other, LimitedHttpToolsProtocol)
            and other._idle()
            and not other.transport.is_closing()
        ]
        if not idle:
            return False
        min(idle, key=lambda other: other._idle_since).transport.close()
        return True

    def _idle(self) -> bool:
        return not self._in_body and (self.cycle is None or self.cycle.response_complete)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    # --- the head ------------------------------------------------------------------------------

    def _start_head(self) -> None:
        if self._head_bytes is None:
            self._head_bytes = 0
            self._head_fed = 0
            self._head_count = 0
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_fed or self._head_bytes:
            self._refuse(408, HEAD_TIMEOUT)
        elif not self.transport.is_closing():
            self.transport.close()

    def _count_head(self, size: int, *, header: bool = False) -> None:
        if self._head_bytes is None:  # not in a head (uvicorn's own calls)
            return
        self._head_bytes += size
        self._head_count += header
        if self._head_bytes > self.limits.max_header_bytes or self._head_count > self.limits.max_headers:
            raise _HeadTooLarge

    def on_message_begin(self) -> None:
        if self._replaying_head:
            return
        self._start_head()  # a pipelined request's head begins inside the previous one's bytes
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._replaying_head:
            return
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._replaying_head:
            return
        self._count_head(len(name) + len(value) + 4, header=True)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._replaying_head:
            return
        self._cancel_head_timer()
        self._head_bytes = None
        self._start_body()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not previous:
            # uvicorn builds its cycle class by name; this one's answers may close (see _ClosingCycle).
            cycle.__class__ = _ClosingCycle
            cycle.protocol = self  # type: ignore[attr-defined]

    # --- the body ------------------------------------------------------------------------------

    def _start_body(self) -> None:
        self._cancel_body_timer()
        self._in_body = True
        self._body_last_byte = self.loop.time()
        self._body_waited = 0.0
        self._body_bytes = 0
        self._body_timer = self.loop.call_later(BODY_CHECK_SECONDS, self._check_body)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _check_body(self) -> None:
        """Every BODY_CHECK_SECONDS while a body is read: is the client too slow?"""
        now = self.loop.time()
        cycle = self.cycle
        # Waiting on the application, not on the client: it has not read what came (reading is
        # paused), or has not asked for the body yet (the client waits for `100 Continue`).
        if cycle is not None and (self.flow.read_paused or cycle.body or cycle.waiting_for_100_continue):
            self._body_last_byte = now
        else:
            self._body_waited += BODY_CHECK_SECONDS
            idle = now - self._body_last_byte > self.limits.body_idle_timeout
            allowed = self.limits.body_idle_timeout + self._body_bytes / self.limits.body_min_rate
            if idle or self._body_waited > allowed:
                self._body_timer = None
                self._refuse(408, BODY_TIMEOUT)
                return
        self._body_timer = self.loop.call_later(BODY_CHECK_SECONDS, self._check_body)

    def on_chunk_header(self) -> None:
        self._after_chunk_header = True
        self._trailer_fed = 0

    def on_body(self, body: bytes) -> None:
        self._after_chunk_header = False
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade() and not self._should_upgrade() and self.scope["method"] != "CONNECT":
            # Not the end: llhttp skipped the body of a request offering an upgrade we decline.
            self._declining_upgrade = True
            return
        self._in_body = False
        self._after_chunk_header = False
        self._cancel_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._idle_since = time.monotonic()
        if self._close_after_response:
            # The answer said the connection ends: a request pipelined behind it is not served.
            self.pipeline.clear()
        super().on_response_complete()
        if (self._in_body or self._close_after_response) and not self.transport.is_closing():
            # Answered before its body was read in full (a 404, a refusal): the rest of it would
            # keep the connection busy for ever, and nothing is going to read it.
            self._cancel_body_timer()
            self._linger()

    def _linger(self) -> None:
        """Close a connection whose answer is sent but whose request body is not all read: say so
        (FIN), drop what the client still sends for a bounded while, then close (see LINGER_*)."""
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        self._linger_bytes_left = LINGER_BYTES
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # --- bytes in --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """uvicorn's, plus the limits: bytes outside a body are a head, counted as they arrive
        (httptools keeps a header until its end, so the parser's own callbacks come too late to
        bound memory), and bytes inside one restart its idle timer."""
        if self._linger_bytes_left is not None:
            self._linger_bytes_left -= len(data)
            if self._linger_bytes_left < 0:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self._in_body:
            self._body_last_byte = self.loop.time()
            self._body_bytes += len(data)
        else:
            self._start_head()
        head = self._head_timer
        in_trailer = self._in_body and self._after_chunk_header
        try:
            self.parser.feed_data(data)
            if head is not None and head is self._head_timer:  # the same head, still incomplete
                self._head_fed += len(data)
                if self._head_fed > self.limits.max_header_bytes:
                    raise _HeadTooLarge
            if in_trailer and self._in_body and self._after_chunk_header:
                # A whole read after a chunk header with no chunk data: trailer fields, held to
                # the head's size limit (a data chunk's bytes would have reached on_body).
                self._trailer_fed += len(data)
                if self._trailer_fed > self.limits.max_header_bytes:
                    raise _HeadTooLarge
        except _HeadTooLarge:
            self._refuse(431, HEAD_TOO_LARGE)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, HEAD_TOO_LARGE)
            else:
                self._bad_request()
        except httptools.HttpParserError:
            self._bad_request()
        except httptools.HttpParserUpgrade as upgrade:
            if self._declining_upgrade:
                self._serve_without_upgrade(data[upgrade.args[0] :])
            elif self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _serve_without_upgrade(self, rest: bytes) -> None:
        """Go on with a request whose upgrade offer is declined as if it had made none: a fresh parser
        is given its head without `Upgrade` (the callbacks ignore it: the request is already under
        way), then the bytes after the head, which it parses as this request's body and beyond."""
        self._declining_upgrade = False
        version = self.scope["http_version"].encode()
        head = [self.scope["method"].encode(), b" ", self.url, b" HTTP/" + version + b"\r\n"]
        for name, value in self.headers:
            if name != b"upgrade":
                head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.parser = httptools.HttpRequestParser(self)
        self._replaying_head = True
        try:
            self.parser.feed_data(b"".join(head))  # a head llhttp has just accepted
        except httptools.HttpParserError:
            self._bad_request()
            return
        finally:
            self._replaying_head = False
        if rest:
            self.data_received(rest)

    def _bad_request(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` (unless an answer is already under way) and close the connection; the
        application, if it is running, sees a disconnect."""
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self.transport.is_closing():
            return
        self.logger.warning("%s %s", status, message)
        cycle = self.cycle
        # A head's refusal is the answer to that head, unless an earlier request's answer is still
        # being sent; a body's only while its request has no answer yet.
        if self._in_body:
            answer = cycle is not None and not cycle.response_started
        else:
            answer = cycle is None or cycle.response_complete
        if answer:
            body = message.encode()
            head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
            head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
            head += [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n",
            ]
            if status == 503:
                head.append(b"retry-after: 5\r\n")
            self.transport.write(b"".join([*head, b"\r\n", body]))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


class _ClosingCycle(RequestResponseCycle):
    """uvicorn's request cycle, whose answer says `Connection: close` when it begins before the
    request's body has all been received (a refusal before reading, a 413 or 503 part-way through).
    Such a connection is going to end with that answer (the lingering close above): without the
    header the answer reads as keep-alive, a client such as httpx puts the connection back in its
    pool and sends its next request on it, which the closing server drops unanswered; the client
    sees "Server disconnected without sending a response" (RFC 9112 §9.6: the server says close in
    the answer that ends the connection). The protocol, not uvicorn, then closes it: uvicorn would
    close the socket at once, with the body's rest unread, whose reset can destroy the answer."""

    protocol: LimitedHttpToolsProtocol

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] != "http.response.start"
            or self.response_started
            or self.disconnected
            or not self.more_body
        ):
            await super().send(message)
            return
        headers = list(message.get("headers", []))
        said_close = any(
            name.lower() == b"connection" and b"close" in value.lower() for name, value in headers
        )
        if not said_close:
            headers.append((b"connection", b"close"))
        self.protocol._close_after_response = True
        await super().send({**message, "headers": headers})
        # uvicorn closes at the answer's end when keep_alive is off; the protocol lingers instead.
        self.keep_alive = True
