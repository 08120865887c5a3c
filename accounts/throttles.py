"""Throttles on sign-up (`POST /api/auth/register/`, the sign-up form): at most
`AUTH_RATE_LIMIT` per client address and per name. Password checks have their own
guard (accounts/guard.py), which counts failures atomically. The counts live in
Django's cache: Redis in production (shared by every node), memory when embedded.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle


class _AuthThrottle(SimpleRateThrottle):
    def get_rate(self) -> str:
        # Read at each request, not at import: tests and operators change it.
        return settings.AUTH_RATE_LIMIT


class AuthAddressThrottle(_AuthThrottle):
    """Tries per client address (REMOTE_ADDR; daphne --proxy-headers sets it behind nginx)."""

    scope = "auth-address"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AuthUsernameThrottle(_AuthThrottle):
    """Tries per user name, whatever address they come from."""

    scope = "auth-username"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        data = getattr(request, "data", None)
        if data is None or not hasattr(data, "get"):
            data = request.POST
        username = data.get("username") if hasattr(data, "get") else None
        if not isinstance(username, str) or not username:
            return None
        return self.cache_format % {"scope": self.scope, "ident": username.lower()[:150]}


AUTH_THROTTLES = [AuthAddressThrottle, AuthUsernameThrottle]


def refused(request: Any) -> float | None:
    """For plain Django views (the login form): seconds to wait, or None when allowed."""
    waits = []
    for throttle_class in AUTH_THROTTLES:
        throttle = throttle_class()
        if not throttle.allow_request(request, None):
            waits.append(throttle.wait() or 60.0)
    return max(waits) if waits else None
