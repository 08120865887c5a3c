"""Scopes of service tokens (PROTOCOL 12), asked of the credential itself: realtime
does not know how credentials are kept (accounts' `ApiToken.scope_set`)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission


def has_scope(request: Any, scope: str) -> bool:
    """Whether the request's credential carries `scope` (sessions and connection
    tokens carry none)."""
    return scope in getattr(request.auth, "scope_set", ())


class HasScope(BasePermission):
    """A backend API row: 403 `forbidden` without its scope, whoever the caller is
    (staff too)."""

    scope = ""
    message = "this token lacks the scope this request needs"

    @classmethod
    def of(cls, scope: str) -> type[HasScope]:
        return type(
            f"HasScope_{scope}", (cls,), {"scope": scope, "message": f"needs the `{scope}` scope"}
        )

    def has_permission(self, request: Any, view: Any) -> bool:
        return has_scope(request, self.scope)
