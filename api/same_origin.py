"""Refusing a state-changing request that a page of another site made the browser send (CSRF).

The controls (retry, cancel, reprocess) are plain form posts from our own pages, which carry no
secret a foreign page could not: with API keys off, any site could make a visitor's browser post
them. Browsers say where such a request comes from (`Sec-Fetch-Site`, and `Origin` on every
cross-origin POST), and a foreign page cannot forge either; API clients (curl, the CLI) send
neither and are not affected. This is OWASP's "verify the origin with standard headers" defence.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import HTTPException, Request

CROSS_SITE = (
    "Refused: this request came from another site's page. Controls are accepted from this "
    "server's own pages and from API clients only."
)


async def refuse_cross_site(request: Request) -> None:
    """403 for a request a browser sent on behalf of another site's page."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        # Every current browser sends it, and it is the only word to trust from ours: our pages
        # are served with `Referrer-Policy: no-referrer`, so their own form posts say `Origin: null`.
        if site not in ("same-origin", "none"):
            raise HTTPException(status_code=403, detail=CROSS_SITE)
        return
    # A browser too old for Fetch Metadata still sends Origin on a cross-origin POST; "null" (a
    # sandboxed frame, a redirect through another site) gives nothing to trust either.
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        raise HTTPException(status_code=403, detail=CROSS_SITE)
