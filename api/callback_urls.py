"""Which callback URLs the service will POST to: the public-address rules of api.public_urls, in
words that name `callback_url`. Vetted at upload (a 422 names the problem) and again before each
delivery, which connects to the address vetted then."""

from __future__ import annotations

from api.public_urls import MAX_URL_CHARS, PublicTarget, UrlRefused, url_messages, vet_public_url

__all__ = ["MAX_URL_CHARS", "CallbackRefused", "vet_callback_url"]

CALLBACK_URL = url_messages("callback_url", "callbacks go to public addresses only")
NOT_HTTP = CALLBACK_URL.not_http
TOO_LONG = CALLBACK_URL.too_long
NO_HOST = CALLBACK_URL.no_host
HAS_CREDENTIALS = CALLBACK_URL.has_credentials
BAD_PORT = CALLBACK_URL.bad_port
CONTROL_CHARACTERS = CALLBACK_URL.control_characters
UNRESOLVED = CALLBACK_URL.unresolved
PRIVATE = CALLBACK_URL.private

CallbackRefused = UrlRefused


async def vet_callback_url(url: str, *, allow_private: bool) -> PublicTarget:
    """Parse and resolve `url`; CallbackRefused says why it cannot be a callback."""
    return await vet_public_url(url, CALLBACK_URL, allow_private=allow_private)
