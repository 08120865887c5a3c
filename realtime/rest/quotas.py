"""Per-user quotas on what costs the server or other users (docs/security.md, "Limits").

Each quota is a setting of the form `count/period` (`120/minute`). A user's uses
are counted in fixed windows in Django's cache: Redis in production, so every
node counts together; memory when embedded (one process). Over the count, the
request is refused with `rate_limited` and `retry_after` (ms to the window's
end): 429 on REST, an `error` frame on the sockets, which stay open.

The per-connection token bucket (PROTOCOL 8) bounds what one socket sends; these
bound what one user does however many sockets and REST clients they use.
"""

from __future__ import annotations

import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache

from realtime.protocol import Code, TetherError

# A rate's period (project/config.py checks the form `count/period`): its first letter.
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Quota name → the setting holding its rate, and what it counts (for the error text).
QUOTAS = {
    "messages": ("QUOTA_MESSAGES", "messages posted over REST"),
    "conversations": ("QUOTA_CONVERSATIONS", "conversations created"),
    "members": ("QUOTA_MEMBER_ADDS", "members added"),
    "user_lookups": ("QUOTA_USER_LOOKUPS", "user look-ups"),
    "topic_history": ("QUOTA_TOPIC_HISTORY", "topic history reads"),
    "subscriptions": ("QUOTA_SUBSCRIPTIONS", "subscribes and unsubscribes"),
    "push_subscriptions": ("QUOTA_PUSH_SUBSCRIPTIONS", "push subscriptions registered or removed"),
    "uploads": ("QUOTA_UPLOADS", "attachments uploaded"),
}


def rate(value: str) -> tuple[int, int]:
    """`10/minute` → (10, 60)."""
    count, _, period = value.partition("/")
    return int(count), PERIODS[period[0]]


def take(key: str, window: int) -> int:
    """Add one to `key` (created for `window` seconds); the new count. Atomic."""
    for _ in range(3):
        cache.add(key, 0, timeout=window)
        try:
            return cache.incr(key)
        except ValueError:  # expired between the two calls: start the window again
            continue
    return 1


def give_back(key: str) -> None:
    try:
        cache.decr(key)
    except ValueError:
        pass  # the window ended meanwhile


def charge(name: str, user_id: int) -> None:
    """Count one use of quota `name` by the user; `rate_limited` when over it."""
    setting, what = QUOTAS[name]
    limit, window = rate(getattr(settings, setting))
    now = time.time()
    slot = int(now // window)
    key = f"tether:quota:{name}:{user_id}:{slot}"
    if take(key, window + 1) <= limit:
        return
    retry_after = max(1, int(((slot + 1) * window - now) * 1000))
    raise TetherError(
        Code.RATE_LIMITED,
        f"at most {limit} {what} per {_period_text(window)}; retry in {retry_after} ms",
        retry_after=retry_after,
    )


async def acharge(name: str, user_id: int) -> None:
    """`charge` from the sockets' event loop (the cache client is synchronous)."""
    await sync_to_async(charge, thread_sensitive=False)(name, user_id)


def _period_text(window: int) -> str:
    return {1: "second", 60: "minute", 3600: "hour", 86400: "day"}[window]


def all_off() -> dict[str, str]:
    """Settings that take every quota out of the way: for benchmarks and tests, whose
    few users make far more requests than people would."""
    return {setting: "1000000/second" for setting, _ in QUOTAS.values()}
