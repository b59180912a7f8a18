"""HEAD answered as GET without the body, on every route that answers GET (RFC 9110 §9.3.2).

FastAPI routes declared with `@router.get` answer HEAD with 405, so link checkers, `curl -I` and
caches that validate with HEAD were refused. One pure ASGI layer hands HEAD to the app as GET and
passes on the answer's status and headers (Content-Length, ETag, Last-Modified as GET has them),
but not its body; routes and the OpenAPI document stay as they are.

The body a route makes is dropped, not avoided: a file is read for nothing, which costs what a GET
would. A streamed answer (`/tasks/{id}/events`) ends with its headers: once the answer is complete
the server reports the client gone, and the stream stops.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def headers_only(message: Message) -> None:
            nonlocal ended
            if ended:
                return
            if message["type"] == "http.response.body":
                # The server sends no body for HEAD; the answer ends with the first part of it.
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
