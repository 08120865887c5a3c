"""Password guessing, refused wherever Django checks a password: the token endpoint,
the login page and the Django admin (accounts/backends.py calls this).

Two counters per window of `AUTH_RATE_LIMIT` (e.g. `10/minute`), in Django's
cache: Redis in production, so every node counts together.

- Per client address: attempts that did not succeed. Over the limit, that
  address is refused whatever name it tries.
- Per user name, as login matches it (stripped, NFKC, case-folded): failed
  attempts from anywhere. Over the limit, the addresses that failed for that
  name are refused; an address that has not failed still may, so an attacker
  cannot lock the owner out of every address.

An attempt takes its place in both counters (an atomic increment) before the
password is checked, and gives it back when it succeeds: fifty tries at once
let at most the limit through.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache

from realtime.rest import quotas


@dataclass(frozen=True)
class Attempt:
    """The places one attempt took; `succeeded` or `failed` settles them."""

    address_key: str
    name_key: str
    pair_key: str
    window: int


def _limit() -> tuple[int, int]:
    return quotas.rate(settings.AUTH_RATE_LIMIT)


def login_name(raw: Any) -> str:
    """The name as login matches it: whatever its case, width or surrounding spaces."""
    return unicodedata.normalize("NFKC", str(raw)).strip().casefold()[:150]


def address(request: Any) -> str:
    """The client's address (REMOTE_ADDR: daphne --proxy-headers sets it behind nginx)."""
    return str(request.META.get("REMOTE_ADDR", ""))


def begin(request: Any, username: Any) -> Attempt | int:
    """Take a place for one attempt at `username`'s password, or the seconds to wait."""
    limit, window = _limit()
    ip = address(request)
    name = hashlib.sha256(login_name(username).encode()).hexdigest()[:32]
    attempt = Attempt(
        f"tether:guard:addr:{ip}",
        f"tether:guard:name:{name}",
        f"tether:guard:pair:{name}:{ip}",
        window,
    )
    if quotas.take(attempt.address_key, window) > limit:
        quotas.give_back(attempt.address_key)
        return window
    if quotas.take(attempt.name_key, window) > limit and cache.get(attempt.pair_key):
        quotas.give_back(attempt.address_key)
        quotas.give_back(attempt.name_key)
        return window
    return attempt


def succeeded(attempt: Attempt) -> None:
    """A right password: the attempt counts against nobody."""
    quotas.give_back(attempt.address_key)
    quotas.give_back(attempt.name_key)


def failed(attempt: Attempt) -> None:
    """A wrong one: it stays counted, and this address has now failed for this name."""
    cache.set(attempt.pair_key, 1, timeout=attempt.window)
