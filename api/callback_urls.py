"""Which callback URLs the service will POST to: http(s) only, and never to this host or a private
network unless WEBHOOK_ALLOW_PRIVATE says so (otherwise an upload could make the server probe
its own network: SSRF).

The check resolves the host name and vets every address it gets. It runs at upload (a 422 names
the problem) and again before each delivery, and the delivery connects to an address vetted then
(`CallbackTarget.pinned_url`), so a DNS answer that changes in between (rebinding) cannot steer
the request inside.

Some IPv6 addresses carry an IPv4 address and reach it (IPv4-mapped and -compatible, NAT64, 6to4,
Teredo); Python's `is_global` judges them by their IPv6 range and calls `64:ff9b::a9fe:a9fe`
(169.254.169.254 through NAT64) public. They are judged by the IPv4 address they carry instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

MAX_URL_CHARS = 2000
RESOLVE_TIMEOUT_SECONDS = 5.0

NOT_HTTP = "`callback_url` must be an http:// or https:// URL."
TOO_LONG = f"`callback_url` is longer than {MAX_URL_CHARS} characters."
NO_HOST = "`callback_url` has no host name."
HAS_CREDENTIALS = "`callback_url` must not carry a user name or password."
BAD_PORT = "`callback_url` has an invalid port."
CONTROL_CHARACTERS = "`callback_url` must not contain control characters."
UNRESOLVED = "`callback_url`: the host name {host!r} does not resolve."
PRIVATE = (
    "`callback_url` points to {address}, a loopback, private or reserved address; "
    "callbacks go to public addresses only."
)
PRIVATE_CARRIED = (
    "`callback_url` points to {address}, which carries the IPv4 address {ipv4}, a loopback, private "
    "or reserved address; callbacks go to public addresses only."
)

# Where the IPv4 address sits in an IPv6 address that carries one (RFC 4291, 6052, 3056, 4380).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# RFC 8215's local-use NAT64 prefix: where the IPv4 address sits depends on the prefix length a
# network chose, and the range is local by definition: never public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallbackRefused(ValueError):
    """The URL cannot be used; the message is for the person who sent it."""


@dataclass(frozen=True)
class CallbackTarget:
    url: str
    host: str
    address: Address

    def pinned_url(self) -> httpx.URL:
        """The URL with its host replaced by the vetted address (the Host header and TLS name
        stay the original host's: see `CallbackTarget.host`)."""
        return httpx.URL(self.url).copy_with(host=str(self.address))


async def vet_callback_url(url: str, *, allow_private: bool) -> CallbackTarget:
    """Parse and resolve `url`; CallbackRefused says why it cannot be used."""
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefused(TOO_LONG)
    # A NUL cannot be stored (PostgreSQL text refuses it), and none belongs in a URL.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        raise CallbackRefused(CONTROL_CHARACTERS)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise CallbackRefused(BAD_PORT) from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused(NOT_HTTP)
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused(HAS_CREDENTIALS)
    host = parts.hostname
    if not host:
        raise CallbackRefused(NO_HOST)
    addresses = await _resolve(host, port or (443 if parts.scheme == "https" else 80))
    if not allow_private:
        for address in addresses:
            refusal = _refusal(address)
            if refusal is not None:
                raise CallbackRefused(refusal)
    return CallbackTarget(url=url, host=host, address=addresses[0])


def _refusal(address: Address) -> str | None:
    """Why `address` may not be called back, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return PRIVATE.format(address=address)
        carried = carried_ipv4(address)
        for ipv4 in carried:
            if not _is_public(ipv4):
                return PRIVATE_CARRIED.format(address=address, ipv4=ipv4)
        if carried:
            return None
    return None if _is_public(address) else PRIVATE.format(address=address)


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
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        raise CallbackRefused(UNRESOLVED.format(host=host[:100])) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise CallbackRefused(UNRESOLVED.format(host=host[:100]))
    return addresses
