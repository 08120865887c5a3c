"""Django's model backend with the guard against password guessing (accounts/guard.py)
in front: every password check (token endpoint, login page, Django admin) goes here."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied

from accounts import guard

# Set on the request when the guard refused, for the view to answer 429 with it.
WAIT_ATTRIBUTE = "tether_guard_wait"


class GuardedModelBackend(ModelBackend):
    def authenticate(
        self, request: Any, username: Any = None, password: Any = None, **kwargs: Any
    ) -> Any:
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if request is None or username is None or password is None:
            return super().authenticate(request, username, password, **kwargs)
        attempt = guard.begin(request, username)
        if not isinstance(attempt, guard.Attempt):
            setattr(request, WAIT_ATTRIBUTE, attempt)
            # Stops Django's authenticate() at once: the password is never checked.
            raise PermissionDenied("too many attempts")
        user = super().authenticate(request, username, password, **kwargs)
        (guard.succeeded if user is not None else guard.failed)(attempt)
        return user


def refused_for(request: Any) -> int | None:
    """Seconds to wait, when the guard refused this request's password check."""
    return getattr(request, WAIT_ATTRIBUTE, None)
