"""DRF authentication with `Authorization: Bearer <api token | connection token>`."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions

from accounts import connection_tokens, credentials
from realtime.transport import signed


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Hashed API tokens (`request.auth` is the ApiToken) and connection tokens signed by
    the application's backend (`request.auth` is their `Claims`)."""

    keyword = "bearer"

    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        value = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, raw = value.partition(" ")
        if scheme.lower() != self.keyword:
            return None
        raw = raw.strip()
        if not raw:
            raise exceptions.AuthenticationFailed("empty bearer token")
        if signed.enabled() and signed.looks_like_jwt(raw):
            return self._connection_token(raw)
        token = credentials.verify_token(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API token")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("this account is disabled")
        return token.user, token

    def _connection_token(self, raw: str) -> tuple[Any, signed.Claims]:
        """PROTOCOL 11: acting as the application's user (created at first sight)."""
        try:
            claims = signed.verify(raw)
            user = connection_tokens.user_for(claims.sub, claims.name)
        except signed.Refused as refused:
            raise exceptions.AuthenticationFailed(f"invalid connection token: {refused}") from None
        if not user.is_active:
            raise exceptions.AuthenticationFailed("this account is disabled")
        return user, claims

    def authenticate_header(self, request: Any) -> str:
        # A WWW-Authenticate header makes DRF answer 401 rather than 403.
        return 'Bearer realm="api"'
