"""DRF authentication with `Authorization: Bearer <api token>`."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions

from accounts import credentials
from accounts.models import ApiToken


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Hashed API tokens; `request.auth` is the ApiToken."""

    keyword = "bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        value = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, raw = value.partition(" ")
        if scheme.lower() != self.keyword:
            return None
        raw = raw.strip()
        if not raw:
            raise exceptions.AuthenticationFailed("empty bearer token")
        token = credentials.verify_token(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API token")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("this account is disabled")
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        # A WWW-Authenticate header makes DRF answer 401 rather than 403.
        return 'Bearer realm="api"'
