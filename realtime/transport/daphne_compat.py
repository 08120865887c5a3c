"""Let daphne send every close code the protocol uses.

daphne's `serverClose` goes through autobahn's `sendClose`, which only allows
1000 and 3000-4999 and raises for 1001, 1009, 1011 and 1012 (PROTOCOL 4). The
close frame itself is valid RFC 6455; autobahn's lower-level `sendCloseFrame`
sends it. Patched once at import of `project.asgi`; each patch is declared in
`patches.py`, which checks upstream's shape before it is replaced.

daphne's `kill_all_applications` (its shutdown trigger) raises KeyError when a
connection's application already finished (a kept-alive HTTP connection), so
the open sockets' consumers are never cancelled and the process can crash at
exit while garbage-collecting them. The patched version skips those entries.

daphne's access log writes query strings (where `?ticket=` lives) straight to
stdout; it is routed through Python logging so the redaction filter and
LOG_FORMAT apply (README, runbook: tickets and tokens never in logs).

autobahn builds the text of its debug log lines on every new connection,
whether debug logging is on or not: it pretty-prints its whole configuration
(a sixth of the event loop's time while sockets open: docs/benchmarks.md,
accepts per second) and colours names through click. That text is now built
only when a line is written.

After a WebSocket upgrade, daphne leaves Twisted's HTTP channel and its request
pointing at each other, about twenty objects per handshake that only a full
collection of the garbage collector frees (the node runs those rarely:
`runtime._tune_interpreter`). The upgrade now unlinks them, so they go at once.

daphne's `--proxy-headers` believes `X-Forwarded-For` and `X-Forwarded-Proto`
from whoever connects: a client that reaches a node directly names its own
address, and with it dodges every per-address bound (handshakes, password
guesses) and writes what it likes into connection records. The headers are now
believed only from a peer in `TRUSTED_PROXIES` (nginx; uvicorn's
`--forwarded-allow-ips` is the same rule); from any other peer its own address
is the client and its scheme the connection's. A peer without an IP address (a
UNIX socket, which only local processes can reach) counts as trusted.

Twisted parses every POSTed `multipart/form-data` body (attachment uploads) into
memory before daphne sees the request, and answers one its parser refuses with a
bare 400; daphne never reads that parse. It is turned off: Django parses uploads
once, in chunks, within its limits.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from collections.abc import Iterable
from typing import Any

from realtime.transport import patches

_PATCHED = False


def patch_daphne_close_codes() -> None:
    """Route daphne's server-side close through `sendCloseFrame` for any valid code."""
    global _PATCHED
    if _PATCHED:
        return
    if importlib.util.find_spec("daphne") is None:  # not installed: nothing to patch
        return

    def server_close(self, code: int | None = None) -> None:  # type: ignore[no-untyped-def]
        code = 1000 if code is None else code
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(code=code)
        else:
            self.sendCloseFrame(code=code, isReply=False)

    patches.replace(patches.DAPHNE_CLOSE, server_close)
    _patch_kill_all_applications()
    _patch_access_log()
    _patch_autobahn_debug_text()
    _patch_upgrade_leftovers()
    _patch_forwarded_headers()
    _patch_form_parsing()
    _PATCHED = True


def _patch_form_parsing() -> None:
    """Twisted parses POSTed multipart bodies itself unless told not to; daphne hands
    the body to the application untouched either way, so the parse only costs a
    copy of the body in memory, and a bare 400 for a body Django would have judged
    (an upload with no part gets `bad_request` naming `file`)."""
    init = patches.original(patches.DAPHNE_FORM_BODIES)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    patches.replace(patches.DAPHNE_FORM_BODIES, __init__)


def _patch_access_log() -> None:
    """Send daphne's access log through Python logging (`tether.access`).

    Then LOG_FORMAT=json covers it too, and the redaction filter on every
    handler removes tickets and tokens from query strings.
    """
    import logging

    access = logging.getLogger("tether.access")

    def write_entry(  # type: ignore[no-untyped-def]
        self, host, date, request, status=None, length=None, ident=None, user=None
    ):
        access.info(
            '%s "%s" %s %s',
            host,
            request,
            status or "-",
            length or "-",
        )

    patches.replace(patches.DAPHNE_ACCESS_LOG, write_entry)


def _patch_kill_all_applications() -> None:
    import asyncio
    import logging

    from twisted.internet import defer

    logger = logging.getLogger("daphne.server")

    def kill_all_applications(self):  # type: ignore[no-untyped-def]
        wait_for = []
        for details in list(self.connections.values()):
            instance = details.get("application_instance")
            if instance is not None and not instance.done():
                instance.cancel()
                wait_for.append(instance)
        logger.info("Killed %i pending application instances", len(wait_for))
        waiting = defer.Deferred.fromFuture(asyncio.gather(*wait_for, return_exceptions=True))
        waiting.addErrback(lambda _: None)
        return waiting

    patches.replace(patches.DAPHNE_KILL_ALL, kill_all_applications)


class _Lazy:
    """`function(*args, **kwargs)` as text, computed only when a log line is formatted."""

    __slots__ = ("args", "function", "kwargs")

    def __init__(self, function: Any, *args: Any, **kwargs: Any) -> None:
        self.function, self.args, self.kwargs = function, args, kwargs

    def __str__(self) -> str:
        return str(self.function(*self.args, **self.kwargs))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _lazy(function: Any) -> Any:
    return lambda *args, **kwargs: _Lazy(function, *args, **kwargs)


def _patch_autobahn_debug_text() -> None:
    import pprint

    from autobahn import util
    from autobahn.twisted import websocket
    from autobahn.websocket import protocol

    # The modules took hltype and hlval by name: replace them where they are used.
    for module in (protocol, websocket):
        for name, function in (("hltype", util.hltype), ("hlval", util.hlval)):
            if hasattr(module, name):
                setattr(module, name, _lazy(function))
    patches.replace(patches.AUTOBAHN_PFORMAT, _lazy(pprint.pformat))
    # The one caller that needs the text itself.
    protocol.Timings.__str__ = lambda self: pprint.pformat(self._timings)  # type: ignore[method-assign]


def _patch_upgrade_leftovers() -> None:
    process = patches.original(patches.DAPHNE_UPGRADE)

    def process_then_unlink(self: Any) -> Any:
        result = process(self)
        # The upgrade hands the transport to the WebSocket protocol, synchronously,
        # and leaves the request without one; a plain HTTP request keeps it.
        if self.transport is None and getattr(self.channel, "requests", None):
            self.channel.requests = []
        return result

    patches.replace(patches.DAPHNE_UPGRADE, process_then_unlink)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: Iterable[str]) -> list[Network] | None:
    """TRUSTED_PROXIES as networks; None when `*` trusts every peer."""
    entries = list(entries)
    if "*" in entries:
        return None
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def is_trusted_proxy(peer: Any, networks: list[Network] | None) -> bool:
    """Whether X-Forwarded-* from `peer` (daphne's `[host, port]`, or None for a peer
    without an IP address) may name the client."""
    if networks is None or peer is None:
        return True
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except (ValueError, IndexError, TypeError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _patch_forwarded_headers() -> None:
    from django.conf import settings

    networks = trusted_networks(settings.TRUSTED_PROXIES)
    for patch in (patches.DAPHNE_FORWARDED_HTTP, patches.DAPHNE_FORWARDED_WS):
        parse = patches.original(patch)

        def parse_if_trusted(  # type: ignore[no-untyped-def]
            headers,
            address_header_name="X-Forwarded-For",
            port_header_name="X-Forwarded-Port",
            proto_header_name="X-Forwarded-Proto",
            original_addr=None,
            original_scheme=None,
            _parse=parse,
        ):
            if not is_trusted_proxy(original_addr, networks):
                return original_addr, original_scheme
            return _parse(
                headers,
                address_header_name,
                port_header_name,
                proto_header_name,
                original_addr,
                original_scheme,
            )

        patches.replace(patch, parse_if_trusted)
