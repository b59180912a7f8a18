"""One SERVER span per HTTP request when tracing is on (core/tracing.py), named and described as
OpenTelemetry's HTTP conventions say: `POST /upload`, with the method, route, path, status code.

A pure ASGI layer: with tracing off it is one test per request and nothing else. A `traceparent`
header from the client continues the client's trace, as the W3C Trace Context asks.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import tracing

# Attribute values are free text from the client: bounded, so a span stays small.
_MAX_HEADER_VALUE = 256
_MAX_PATH = 1024


class ServerSpans:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        method = scope["method"]
        attributes: dict[str, tracing.AttributeValue] = {
            "http.request.method": method,
            "url.path": scope["path"][:_MAX_PATH],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        server = scope.get("server")
        if server:
            attributes["server.address"], attributes["server.port"] = server[0], server[1] or 80
        agent = headers.get(b"user-agent")
        if agent:
            attributes["user_agent.original"] = agent.decode("latin-1")[:_MAX_HEADER_VALUE]
        status = 500  # what the client gets if the app raises before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        traceparent = headers.get(b"traceparent")
        parent = traceparent.decode("latin-1")[:_MAX_HEADER_VALUE] if traceparent else None
        with tracing.server_span(method, attributes, parent=parent) as span:
            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                # Known once routed: the route's template, never the path (which holds ids).
                route = getattr(scope.get("route"), "path", None)
                tracing.end_server_span(span, method, route, status)
