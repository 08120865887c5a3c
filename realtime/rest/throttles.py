"""Per-user quotas on REST (realtime/rest/quotas.py), as DRF throttles: checked after
authentication and before the body is read, so a refused request costs nothing."""

from __future__ import annotations

from typing import Any

from rest_framework.throttling import BaseThrottle

from realtime.rest import quotas


class UserQuota(BaseThrottle):
    """One quota on the methods given; `rate_limited` (429, `retry_after`) over it."""

    quota = ""
    methods: frozenset[str] = frozenset()

    @classmethod
    def of(cls, quota: str, *methods: str) -> type[UserQuota]:
        assert quota in quotas.QUOTAS, quota
        return type(f"UserQuota_{quota}", (cls,), {"quota": quota, "methods": frozenset(methods)})

    def allow_request(self, request: Any, view: Any) -> bool:
        user = request.user
        if request.method in self.methods and user is not None and user.is_authenticated:
            quotas.charge(self.quota, user.pk)  # raises TetherError when over
        return True
