"""`Allow` that tells the truth, and `OPTIONS` on every path the API serves.

Starlette answers a method a path lacks with 405 and the methods of the *first* route whose path
matches, so `/tasks/{task_id}` (GET and DELETE are two routes) said `Allow: GET`, to OPTIONS and to
PUT alike. Both come here instead: the methods are those of every route matching the path, found
by asking the app's own router, so a route (or a method on one) added anywhere is listed at once.

OPTIONS reaches this handler only through that 405 (the router raises it when a path matches but no
route takes the method); it is then answered 204 with the same `Allow`. A path no route matches
stays 404 for every method.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

# RFC 9110's order of the methods (then any others alphabetically): the header reads the same every time.
# Probed in RFC 9110's order, which is also the order `Allow` lists them in (the same every time).
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# What a mounted static-file app answers (starlette.staticfiles).
_STATIC_METHODS = ("GET", "HEAD")


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route in `routes` takes on this scope's path, OPTIONS included; [] when
    no route matches the path.

    Each method is asked of each route through `matches`, the router's own test: FastAPI keeps
    included routers as opaque branches, so their routes' `methods` cannot simply be read."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            # A mount takes every method as far as matching goes; its app decides (405 for the rest).
            if route.matches(dict(scope))[0] is not Match.NONE:
                methods.update(_STATIC_METHODS)
            continue
        for method in _METHODS:
            if route.matches({**scope, "method": method})[0] is Match.FULL:
                methods.add(method)
    if not methods:
        return []
    if "GET" in methods:
        methods.add("HEAD")  # answered as GET without the body (api.head_requests)
    return [method for method in _METHODS if method in methods] + ["OPTIONS"]


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """The app's handler for 405: OPTIONS answered 204, any other method 405, both with the path's
    full `Allow`."""
    assert isinstance(exc, HTTPException)  # registered for status 405, which only HTTPException carries
    methods = allowed_methods(request.app.router.routes, request.scope)
    headers = {"Allow": ", ".join(methods)} if methods else dict(exc.headers or {})
    if request.method == "OPTIONS" and methods:
        return Response(status_code=204, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)
