"""Which push endpoints the server will post to (PROTOCOL 14).

The endpoint comes from a browser, that is from any user: unchecked, it would make
every node post to whatever address a user names, the operator's own network
included (server-side request forgery). An endpoint must be `https://` and its
host must be public: a literal address is checked as written, a name is resolved
and refused when any of its addresses is loopback, private, link-local, shared,
multicast, reserved or unspecified. Names are resolved when the subscription is
registered and again before each push (a name may be re-pointed later; the
request then resolves once more, so a name re-pointed within that moment is the
risk left, as with any resolver-based check). Endpoints starting with a prefix
of `PUSH_ENDPOINT_ALLOWLIST` skip these checks (tests, an in-house push service).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings

MAX_LENGTH = 1000

Resolver = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    """Every address the name resolves to (empty when it does not)."""
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def allowlisted(endpoint: str) -> bool:
    return any(endpoint.startswith(prefix) for prefix in settings.PUSH_ENDPOINT_ALLOWLIST)


def problem(endpoint: object, resolver: Resolver | None = resolve) -> str | None:
    """Why the server must not post to `endpoint`, or None when it may. `resolver`
    None checks the form and literal addresses only."""
    if not isinstance(endpoint, str) or not endpoint:
        return "must be the subscription's endpoint URL (a string)"
    if len(endpoint) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a URL"
    if not host or any(c.isspace() for c in endpoint):
        return "is not a URL with a host"
    # Before the allowlist: `http://127.0.0.1:80@elsewhere/` starts with an allowed
    # prefix and goes to `elsewhere`.
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry credentials"
    if allowlisted(endpoint):
        return None
    if parts.scheme != "https":
        return "must be an https:// URL"
    try:
        literal: str | None = str(ipaddress.ip_address(host))
    except ValueError:
        literal = None
    if literal is not None:
        return None if _public(literal) else "must not point to a private or local address"
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return "must not point to a private or local address"
    if resolver is None:
        return None
    addresses = resolver(host)
    if not addresses:
        return "names a host that does not resolve"
    if not all(_public(a) for a in addresses):
        return "must not point to a private or local address"
    return None
