"""Handshakes per client address, bounded before anything costs (docs/security.md).

Authenticating a socket reads the database (a token, a ticket, a session); a
flood of `?ticket=junk` handshakes from one address would keep it busy. Each
address gets a token bucket (`HANDSHAKE_RATE_PER_SECOND`, `HANDSHAKE_BURST`) on
this node; beyond it the handshake is refused before authentication, as a
foreign Origin is (HTTP 403). The shipped nginx site bounds handshakes per
address first, for every node behind it (429, docs/deployment.md "Limits at
nginx"); this is the second line, for handshakes that reach a node otherwise.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from channels.security.websocket import WebsocketDenier
from django.conf import settings

from monitoring import metrics
from realtime.node.ratelimit import TokenBucket

# Addresses remembered at most; the least recently seen go first (each is a few
# hundred bytes: a flood from many addresses cannot grow the node without bound).
MAX_ADDRESSES = 100_000


class AddressBuckets:
    """One token bucket per address, the least recently seen forgotten first."""

    def __init__(self, max_addresses: int = MAX_ADDRESSES) -> None:
        self.max_addresses = max_addresses
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, address: str, rate: float, burst: float, now: float) -> bool:
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = TokenBucket(rate, burst, now)
            while len(self.buckets) > self.max_addresses:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(address)
        return bucket.take(now) == 0


class HandshakeLimitMiddleware:
    """Refuses a socket handshake (403) from an address over its handshake rate."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.buckets = AddressBuckets()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        client = scope.get("client") or ("", 0)
        rate, burst = settings.HANDSHAKE_RATE_PER_SECOND, settings.HANDSHAKE_BURST
        if not self.buckets.allow(str(client[0]), rate, burst, time.monotonic()):
            metrics.HANDSHAKES_REFUSED.inc()
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)
