"""Socket authentication (PROTOCOL 2, 11): session cookie, then Bearer token (an API
token or a connection token signed by the application's backend), then ticket.

The result goes into the scope; the consumer accepts and closes with 4401
(or 4403 for a disabled account) so browsers can tell "log in again" apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.auth import get_user
from channels.sessions import SessionMiddlewareStack
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from accounts import connection_tokens, credentials
from realtime.node.batching import Batcher
from realtime.node.db import in_pool
from realtime.protocol import Code, TetherError, bad_request
from realtime.transport import signed
from realtime.transport.origin import header

log = logging.getLogger("tether.auth")


@dataclass(frozen=True)
class SocketAuth:
    """How a socket authenticated, and which credential it rests on."""

    method: str  # "session" | "token" | "jwt" | "ticket" | "" (none)
    ref: str  # "session:<hash>" | "token:<id>" | "jwt:<user id>" | ""
    disabled: bool = False  # valid credential of an inactive account → 4403
    failed: bool = False  # the check itself failed (database down) → 1011
    expires_at: int | None = None  # ms: the credential's end (a connection token's `exp`)


NO_AUTH = SocketAuth("", "")


def _bearer(scope: dict[str, Any]) -> str | None:
    value = header(scope, b"authorization")
    if not value:
        return None
    scheme, _, raw = value.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None
    return raw.strip()


def _ticket(scope: dict[str, Any]) -> str | None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("ticket")
    return values[0] if values else None


@in_pool
def _users_for_tokens(raws: list[str]) -> list[tuple[Any, SocketAuth] | None]:
    return [
        None
        if token is None
        else (
            token.user,
            SocketAuth(
                "token",
                credentials.token_ref(token.pk),
                not token.user.is_active,
                expires_at=credentials.ms(token.expires_at),
            ),
        )
        for token in credentials.verify_tokens(raws)
    ]


# Handshakes that arrive together have their tokens checked together: one thread
# hop and one query per batch instead of per socket (docs/benchmarks.md, accepts per second).
_token_checks: Batcher[str, tuple[Any, SocketAuth] | None] = Batcher(_users_for_tokens)


async def _user_for_token(raw: str) -> tuple[Any, SocketAuth] | None:
    return await _token_checks.submit(raw)


@in_pool
def _user_for_ticket(raw: str) -> tuple[Any, SocketAuth] | None:
    ticket = credentials.consume_ticket(raw)
    if ticket is None:
        return None
    expires_at = credentials.ms(ticket.credential_expires_at)
    return ticket.user, SocketAuth(
        "ticket", ticket.auth_ref, not ticket.user.is_active, expires_at=expires_at
    )


@in_pool
def _user_for_connection_token(raw: str) -> tuple[Any, SocketAuth] | None:
    try:
        claims = signed.verify(raw)
        user = connection_tokens.user_for(claims.sub, claims.name)
    except signed.Refused as refused:
        log.info("connection token refused: %s", refused)
        return None
    ref = connection_tokens.jwt_ref(user.pk)
    return user, SocketAuth("jwt", ref, not user.is_active, expires_at=claims.expires_at_ms)


def refresher(user: Any) -> Any:
    """What a `refresh` frame calls on a socket resting on a connection token: the new
    token's expiry in ms, or TetherError (`bad_request` invalid, `forbidden` another user)."""

    async def refresh(raw: str) -> int:
        try:
            claims = signed.verify(raw)
        except signed.Refused as refused:
            raise bad_request("token", f"not a valid connection token: {refused}") from None
        if claims.sub != user.external_id:
            raise TetherError(Code.FORBIDDEN, "the token is for another user")
        return claims.expires_at_ms

    return refresh


async def authenticate(scope: dict[str, Any]) -> tuple[Any, SocketAuth]:
    """The first credential that authenticates, in the protocol's order."""
    session = scope.get("session")
    if scope.get("tether_origin_ok") and session is not None and session.session_key:
        user = await get_user(scope)
        if user.is_authenticated:
            # The socket ends with its session (closed with 4401 at expiry).
            ends = await in_pool(credentials.session_ends)(session.session_key)
            ref = credentials.session_ref(session.session_key)
            return user, SocketAuth("session", ref, expires_at=credentials.ms(ends))
    raw = _bearer(scope)
    if raw:
        if signed.enabled() and signed.looks_like_jwt(raw):
            found = await _user_for_connection_token(raw)
        else:
            found = await _user_for_token(raw)
        if found:
            return found
    raw = _ticket(scope)
    if raw:
        found = await _user_for_ticket(raw)
        if found:
            return found
    return AnonymousUser(), NO_AUTH


class SessionIfCookie:
    """channels' session middleware, only for sockets that could use a session: one
    with a session cookie and an allowed Origin (a session is trusted only then).
    Others (tokens, tickets) skip parsing cookies, a session store per socket and
    a wrapper around every `send` (docs/benchmarks.md: accepts per second, memory per socket)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.with_session = SessionMiddlewareStack(app)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("tether_origin_ok") and _has_cookie(scope, settings.SESSION_COOKIE_NAME):
            return await self.with_session(scope, receive, send)
        return await self.app(scope, receive, send)


def _has_cookie(scope: dict[str, Any], name: str) -> bool:
    """Whether a `name=` cookie may be present (a false positive only costs the full path)."""
    cookies = header(scope, b"cookie")
    return cookies is not None and f"{name}=" in cookies


class WebSocketAuthMiddleware:
    """Puts `user` and `tether_auth` into the scope of every socket."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        try:
            user, auth = await authenticate(scope)
        except Exception:
            log.exception("socket authentication failed")
            user, auth = AnonymousUser(), SocketAuth("", "", failed=True)
        # In place, not a copy: see OriginCheckMiddleware.
        scope["user"] = user
        scope["tether_auth"] = auth
        if auth.ref.startswith(connection_tokens.JWT_REF):
            # It rests on a connection token (directly or through a ticket minted with
            # one): a `refresh` frame may move its expiry (PROTOCOL 11). Not a session
            # or an API token of the same user: a JWT must not outlive those.
            scope["tether_refresh"] = refresher(user)
        return await self.app(scope, receive, send)
