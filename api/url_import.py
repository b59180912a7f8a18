"""Import by URL: `POST /upload` with a `url` field instead of `file` makes the API fetch the image.

The fetch happens in the request, before the task exists, so a URL that cannot give an image is
refused at once with a status that names the problem (422 for a refused URL, 413 too big, 415 not
an image, 502 the remote failed, 504 it was too slow) and no task is ever made for it; the bytes then
take the upload's own path (temporary file, probe, keep). The price is an API request held open
for the fetch, bounded by URL_IMPORT_TIMEOUT_SECONDS and MAX_UPLOAD_BYTES.

Every hop is vetted by api.public_urls (resolve once, every address public, connect to the vetted
address with the original Host and TLS name): redirects are followed by hand, each new URL vetted
again, at most MAX_REDIRECTS of them. The body is read raw (no Content-Encoding decoding: a
compressed bomb stays the size it was sent), counted against MAX_UPLOAD_BYTES and refused early on
a Content-Length over it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

import httpx

from api.public_urls import PublicTarget, UrlRefused, url_messages, vet_public_url
from api.uploads import EMPTY_FILE, TOO_LARGE, FetchedFile, UploadRefused

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
USER_AGENT = "imagequeue-import/1"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

IMPORT_URL = url_messages("url", "images are imported from public addresses only")
TOO_MANY_REDIRECTS = f"`url`: more than {MAX_REDIRECTS} redirects."
REDIRECT_WITHOUT_LOCATION = "`url`: the server answered {status} without a Location to follow."
REMOTE_STATUS = "`url`: the server answered {status}; no image was imported."
REMOTE_FAILED = "`url`: the image could not be fetched ({reason})."
# The reasons a 502 gives, by what failed (api.url_import.failure_category).
CONNECT_FAILED = "the server could not be connected to"
TLS_FAILED = "the TLS handshake with the server failed"
NOT_HTTP = "the server did not answer in valid HTTP, or its answer ended early"
READ_FAILED = "the connection broke while the answer was being read"
WRITE_FAILED = "the connection broke while the request was being sent"
UNREADABLE = "the answer of the server could not be read"
_CATEGORIES: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.RemoteProtocolError, NOT_HTTP),
    (httpx.ReadError, READ_FAILED),
    (httpx.WriteError, WRITE_FAILED),
)
INVALID_URL = "`url` (or a redirect's Location) is not a valid URL."
REMOTE_TIMEOUT = "`url`: fetching the image took longer than {seconds:g} seconds."


@dataclass(frozen=True)
class UrlImportPolicy:
    allow_private: bool
    max_bytes: int
    timeout_seconds: float


async def fetch_image(url: str, target: BinaryIO, policy: UrlImportPolicy) -> FetchedFile:
    """Write the body `url` answers into `target`; UploadRefused says why it could not be done."""
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            return await _fetch(url, target, policy)
    except (TimeoutError, httpx.TimeoutException):
        raise UploadRefused(504, REMOTE_TIMEOUT.format(seconds=policy.timeout_seconds)) from None
    except httpx.InvalidURL:  # one the vetting let through but httpx cannot send (not an HTTPError)
        raise UploadRefused(422, INVALID_URL) from None
    except httpx.HTTPError as exc:
        # The raw text (what the remote side sent, addresses it resolved to) stays in the log.
        log.info("url import failed: %s: %.300r", type(exc).__name__, str(exc))
        raise UploadRefused(502, REMOTE_FAILED.format(reason=failure_category(exc))) from None


def failure_category(exc: httpx.HTTPError) -> str:
    """What went wrong, in our words: never the error's own text, which can quote what the remote
    side sent (an arbitrary status line) or name an address inside the network."""
    if isinstance(exc, httpx.ConnectError):
        return TLS_FAILED if _caused_by(exc, ssl.SSLError) else CONNECT_FAILED
    for kind, category in _CATEGORIES:
        if isinstance(exc, kind):
            return category
    return UNREADABLE


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # a bounded walk: a chain may loop
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _fetch(url: str, target: BinaryIO, policy: UrlImportPolicy) -> FetchedFile:
    async with httpx.AsyncClient(
        timeout=policy.timeout_seconds,
        follow_redirects=False,  # each hop is vetted first (_vet)
        trust_env=False,  # no proxy from the environment: the address check must hold
        headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
    ) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            vetted = await _vet(url, policy)
            host_header, extensions = vetted.request_options()
            async with client.stream(
                "GET", vetted.pinned_url(), headers=host_header, extensions=extensions
            ) as response:
                status = response.status_code
                if status in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise UploadRefused(502, REDIRECT_WITHOUT_LOCATION.format(status=status))
                    url = str(httpx.URL(url).join(location))
                    continue
                if not 200 <= status < 300:
                    raise UploadRefused(502, REMOTE_STATUS.format(status=status))
                return await _receive_body(response, url, target, policy.max_bytes)
    raise UploadRefused(422, TOO_MANY_REDIRECTS)


async def _vet(url: str, policy: UrlImportPolicy) -> PublicTarget:
    try:
        return await vet_public_url(url, IMPORT_URL, allow_private=policy.allow_private)
    except UrlRefused as exc:
        raise UploadRefused(422, str(exc)) from None


async def _receive_body(response: httpx.Response, url: str, target: BinaryIO, max_bytes: int) -> FetchedFile:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise UploadRefused(413, TOO_LARGE.format(limit=max_bytes))
    digest = hashlib.sha256()
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > max_bytes:
            raise UploadRefused(413, TOO_LARGE.format(limit=max_bytes))
        digest.update(chunk)
        # As for uploads (api.uploads._receive): a page-cache write costs less than a thread hop.
        target.write(chunk)
    if size == 0:
        raise UploadRefused(400, EMPTY_FILE)
    return FetchedFile(raw_filename=_name_in(url), size_bytes=size, sha256=digest.hexdigest())


def _name_in(url: str) -> str | None:
    """The URL's last path segment, as the task's display name (api.uploads.display_name cleans it)."""
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return segment or None
