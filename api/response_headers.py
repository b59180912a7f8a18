"""Headers every answer carries, in one pure ASGI layer (no per-request task, no body buffering):

- `X-Content-Type-Options: nosniff` everywhere; on HTML pages a strict Content-Security-Policy and
  `Referrer-Policy: no-referrer` (user text is escaped as well).
- `X-Request-ID`: taken from the request when a proxy sent a sane one, made up otherwise, and put
  on every log line written while the request is handled.
- `Tus-Resumable: 1.0.0` on every answer under the tus endpoint (tus 1.0 asks it of all of them),
  including those no tus route wrote: a refused API key (401), the key limits' 429/403, a 405 for
  a method, a 503 from the database or the store, and a 500 for an unhandled exception.

An unhandled exception is answered here (the same plain 500 Starlette's outermost error layer would
write) and then re-raised, so the server still logs it: that layer sits outside every middleware and
its answer would carry none of these headers.
"""

from __future__ import annotations

import re
import uuid

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.tus_protocol import TUS_PATH, TUS_VERSION
from core.logs import request_context

# HTML pages load nothing from elsewhere and cannot be framed. Scripts only as files from
# /static (no inline script, so user text that slipped through escaping still could not run);
# `connect-src` lets them follow a task's event stream and poll /status.
PAGE_CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def page_csp(*, connect_also: str = "") -> str:
    """PAGE_CSP, letting scripts also reach `connect_also` (the S3 store a page uploads to
    directly); a page that sends its own Content-Security-Policy keeps it."""
    return (
        PAGE_CSP.replace("connect-src 'self';", f"connect-src 'self' {connect_also};")
        if connect_also
        else PAGE_CSP
    )


# /docs and /redoc load their scripts from a CDN by FastAPI's design; they get no page CSP.
_CSP_EXEMPT = ("/docs", "/redoc")
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_TUS_VERSION = TUS_VERSION.encode()
# `Connection: close` says what uvicorn does anyway after an exception (it closes the socket), so a
# client does not send its next request down a connection that is going away.
_SERVER_ERROR = PlainTextResponse("Internal Server Error", status_code=500, headers={"Connection": "close"})


class ResponseHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        exempt = path.startswith(_CSP_EXEMPT)
        tus = path.startswith(TUS_PATH) or path == TUS_PATH.rstrip("/")
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given.decode() if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                content_type = dict(headers).get(b"content-type", b"")
                if content_type.startswith(b"text/html") and not exempt:
                    if b"content-security-policy" not in names:
                        headers.append((b"content-security-policy", PAGE_CSP.encode()))
                    headers.append((b"referrer-policy", b"no-referrer"))
                if tus and b"tus-resumable" not in names:
                    headers.append((b"tus-resumable", _TUS_VERSION))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_headers(message)

        with request_context(request_id):
            try:
                await self.app(scope, receive, send_tracked)
            except Exception:
                if not started:
                    await _SERVER_ERROR(scope, receive, send_with_headers)
                raise
