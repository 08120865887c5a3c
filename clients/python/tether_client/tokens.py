"""Tokens the application's backend signs for Tether (PROTOCOL 11).

A connection token lets one of the application's users open sockets and call REST
as themselves; a subscription token opens one topic of a namespace with access
`token`. Both are JWTs signed with `JWT_SECRET` (HS256) or with the private half of
`JWT_PUBLIC_KEY` (RS256, ES256; those need `PyJWT[crypto]`).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import jwt

MAX_SUB_CHARS = 150
ALGORITHMS = ("HS256", "RS256", "ES256")


def _seconds(ttl: float | timedelta) -> float:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    return seconds


def _claims(
    sub: str | int, ttl: float | timedelta, audience: str | None, issuer: str | None
) -> dict[str, Any]:
    sub = str(sub)
    if not 1 <= len(sub) <= MAX_SUB_CHARS:
        raise ValueError(f"sub must be 1 to {MAX_SUB_CHARS} characters")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(_seconds(ttl))}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return claims


def _sign(claims: dict[str, Any], key: Any, algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        # Tether accepts only these; signing with another would be refused anyway.
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
    return jwt.encode(claims, key, algorithm=algorithm)


def connection_token(
    key: Any,
    sub: str | int,
    ttl: float | timedelta,
    *,
    name: str | None = None,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A connection token for the application's user `sub`, valid `ttl` seconds.

    `key` is the shared secret for HS256 or a private key (PEM or a `cryptography`
    key object) for RS256 / ES256. `name` becomes the Tether username at first sight
    when it is free. `audience` / `issuer` must match `JWT_AUDIENCE` / `JWT_ISSUER`
    when the server sets them.
    """
    claims = _claims(sub, ttl, audience, issuer)
    if name is not None:
        claims["name"] = name
    return _sign(claims, key, algorithm)


def subscription_token(
    key: Any,
    sub: str | int,
    topic: str,
    ttl: float | timedelta,
    *,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A subscription token: user `sub` (an external id, or a Tether id) may
    subscribe to exactly `topic`. Checked when subscribing only."""
    claims = _claims(sub, ttl, audience, issuer)
    claims["topic"] = topic
    return _sign(claims, key, algorithm)


def expires_at(token: str) -> float | None:
    """A JWT's `exp` (Unix seconds) read without verifying it, or None."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) else None
