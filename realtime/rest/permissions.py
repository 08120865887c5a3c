"""Who may do what beyond their own rows: operators' rights (Django permissions) and
the scopes of service tokens (PROTOCOL 12).

Scopes are asked of the credential itself: realtime does not know how credentials
are kept (accounts' `ApiToken.scope_set`). Rights are Django's model permissions,
given in the Django admin to a user or a group (README, "Operators' rights"); the
table of which right opens what is in docs/security.md.
"""

from __future__ import annotations

import functools
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.permissions import BasePermission

# List live connections (`GET /api/admin/connections/`, the admin's list).
VIEW_CONNECTIONS = "realtime.view_liveconnection"
# Close sockets with 4403 and remove stale records (`DELETE /api/admin/connections/<id>/`,
# `POST /api/admin/connections/cleanup/`, the admin's disconnect action).
DISCONNECT = "realtime.disconnect_liveconnection"
# Cluster figures and configuration: `GET /api/stats/`, `GET /api/admin/config/`, `/ops/`,
# topics of namespaces with access `staff` (`ops:stats`), why a `/ready/` check failed.
VIEW_OPERATIONS = "realtime.view_operations"
# `POST /api/topics/<topic>/publish/` with a user's own credential (a service token
# needs its `publish` scope instead).
PUBLISH = "realtime.publish_topic"


def holds(user: Any, right: str) -> bool:
    """Whether `user` has the operator's `right`: an active staff account holding that
    permission, given to the user or to one of their groups (a superuser holds every
    permission, as everywhere in Django).

    Staff status stays required as the Django admin requires it: taking it away ends
    every right at once. Django caches permissions on the user object; a caller
    holding one for long (a socket's) asks `current_user` first.
    """
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm(right)
    )


def current_user(user_id: int) -> Any | None:
    """The user as the database has it now, with no cached permissions (blocking)."""
    return get_user_model()._default_manager.filter(pk=user_id).first()


class HasRight(BasePermission):
    """A staff REST row: 401 without a credential, 403 `forbidden` without the right."""

    right = ""
    message = "this needs an operator's right"

    @classmethod
    @functools.cache
    def of(cls, right: str) -> type[HasRight]:
        return type(
            f"HasRight_{right.replace('.', '_')}",
            (cls,),
            {"right": right, "message": f"needs a staff account with the `{right}` permission"},
        )

    def has_permission(self, request: Any, view: Any) -> bool:
        return holds(request.user, self.right)


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
