"""Which URLs the service will reach on a client's word (callbacks, imports by URL): http(s) only,
and never this host or a private network unless the feature's *_ALLOW_PRIVATE setting says so
(otherwise a request could make the server probe its own network: SSRF).

The check resolves the host name and vets every address it gets. Callers then connect to the
address vetted (`PublicTarget.pinned_url`, with the original host in the Host header and TLS:
`request_options`), so a DNS answer that changes in between (rebinding) cannot steer the request
inside; a redirect is a new URL, vetted again before it is followed.

Some IPv6 addresses carry an IPv4 address and reach it (IPv4-mapped and -compatible, NAT64, 6to4,
Teredo); Python's `is_global` judges them by their IPv6 range and calls `64:ff9b::a9fe:a9fe`
(169.254.169.254 through NAT64) public. They are judged by the IPv4 address they carry instead.

A refusal never names the address a host resolved to, only that it is not public: otherwise anyone
could ask what a name resolves to inside the network (SSRF reconnaissance). The log keeps it. For the
same reason a name that does not resolve gets the same refusal as one that points inside: two answers
would tell which internal names exist. (Only with *_ALLOW_PRIVATE, where inside is allowed, does
"does not resolve" get words of its own.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2000
RESOLVE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class UrlMessages:
    """What a refusal says, naming the field the URL came in and what the service does with it."""

    not_http: str
    too_long: str
    no_host: str
    has_credentials: str
    bad_port: str
    control_characters: str
    unresolved: str  # .format(host=...); only when private addresses are allowed
    # A host that does not resolve, or not only to public addresses: one answer for both.
    private: str


def url_messages(field: str, public_only: str) -> UrlMessages:
    """The refusals for URLs sent in `field`; `public_only` ends the private-address ones."""
    return UrlMessages(
        not_http=f"`{field}` must be an http:// or https:// URL.",
        too_long=f"`{field}` is longer than {MAX_URL_CHARS} characters.",
        no_host=f"`{field}` has no host name.",
        has_credentials=f"`{field}` must not carry a user name or password.",
        bad_port=f"`{field}` has an invalid port.",
        control_characters=f"`{field}` must not contain control characters.",
        unresolved=f"`{field}`: the host name {{host!r}} does not resolve.",
        private=f"`{field}`: its host does not resolve, or not only to public addresses (loopback, "
        f"private and reserved ones are refused, and IPv6 addresses carrying one); {public_only}.",
    )


# Where the IPv4 address sits in an IPv6 address that carries one (RFC 4291, 6052, 3056, 4380).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# RFC 8215's local-use NAT64 prefix: where the IPv4 address sits depends on the prefix length a
# network chose, and the range is local by definition: never public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL cannot be used; the message is for the person who sent it."""


@dataclass(frozen=True)
class PublicTarget:
    url: str
    host: str
    address: Address

    def pinned_url(self) -> httpx.URL:
        """The URL with its host replaced by the vetted address (the Host header and TLS name
        stay the original host's: see `request_options`)."""
        return httpx.URL(self.url).copy_with(host=str(self.address))

    def request_options(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The Host header and httpx extensions that make a request to `pinned_url` reach the
        original host by name: its Host header, and its name in TLS (SNI and the certificate check)."""
        host = httpx.URL(self.url).netloc.decode("ascii")
        return {"Host": host}, {"sni_hostname": self.host}


async def vet_public_url(url: str, messages: UrlMessages, *, allow_private: bool) -> PublicTarget:
    """Parse and resolve `url`; UrlRefused says why it cannot be used (in `messages`' words)."""
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(messages.too_long)
    # A NUL cannot be stored (PostgreSQL text refuses it), and none belongs in a URL.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise UrlRefused(messages.control_characters)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused(messages.bad_port) from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(messages.not_http)
    if parts.username is not None or parts.password is not None:
        raise UrlRefused(messages.has_credentials)
    host = parts.hostname
    if not host:
        raise UrlRefused(messages.no_host)
    addresses = await _resolve(host, port or (443 if parts.scheme == "https" else 80))
    if not addresses:
        if allow_private:
            raise UrlRefused(messages.unresolved.format(host=host[:100]))
        log.info("refused a URL: %r does not resolve", host[:100])
        raise UrlRefused(messages.private)
    if not allow_private:
        for address in addresses:
            reason = _not_public(address)
            if reason is not None:
                log.info("refused a URL: %r resolves to %s", host[:100], reason)
                raise UrlRefused(messages.private)
    return PublicTarget(url=url, host=host, address=addresses[0])


def _not_public(address: Address) -> str | None:
    """Why `address` may not be reached (for the log alone), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return f"{address} (local-use NAT64)"
        carried = carried_ipv4(address)
        for ipv4 in carried:
            if not _is_public(ipv4):
                return f"{address}, which carries {ipv4}"
        if carried:
            return None
    return None if _is_public(address) else str(address)


def carried_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses a packet to `address` ends up at (for Teredo: its server and its client)."""
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    # `::` and `::1` lie in ::/96 but are the unspecified and loopback addresses, not IPv4.
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return (ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF),)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo
    return ()


def _is_public(address: Address) -> bool:
    return address.is_global and not address.is_multicast


async def _resolve(host: str, port: int) -> list[Address]:
    """The host's addresses; none when it does not resolve (in time)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
