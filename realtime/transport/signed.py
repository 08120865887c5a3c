"""Tokens signed by the application's backend (PROTOCOL 11): verification only.

Connection tokens (accounts/connection_tokens.py maps their `sub` to a user)
and subscription tokens (topics with access `token`) are both checked here.

The backend signs with `JWT_SECRET` (HS256) or with the private half of
`JWT_PUBLIC_KEY` (RS256 for an RSA key, ES256 for a P-256 key). A token must
carry `sub` (the application's user id) and `exp`; `aud` and `iss` are checked
when `JWT_AUDIENCE` / `JWT_ISSUER` are set. Verification is PyJWT's; the
algorithm a token may use is the one its key was configured for, never the one
its header asks for alone (`alg: none` and key confusion are refused).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from django.conf import settings

MAX_SUB_CHARS = 150


def valid_sub(value: object) -> bool:
    """The application's user id: a token's `sub`, a user's `external_id`."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_SUB_CHARS and "\x00" not in value


class Refused(Exception):
    """A token that does not verify; the message says why."""


@dataclass(frozen=True)
class Claims:
    """What Tether uses of a verified connection token (also `request.auth` on REST)."""

    sub: str
    exp: int  # seconds since the epoch
    name: str | None = None

    @property
    def expires_at_ms(self) -> int:
        return self.exp * 1000


def enabled() -> bool:
    """Whether any key is configured: without one, no JWT is looked at."""
    return bool(settings.JWT_SECRET or settings.JWT_PUBLIC_KEY)


def looks_like_jwt(raw: str) -> bool:
    """Three dot-separated parts: told apart from API tokens (`tt_…`) without a query."""
    return raw.count(".") == 2 and len(raw) <= 8192


def _keys() -> dict[str, Any]:
    """Algorithm → key, for the configured keys only."""
    return _keys_for(settings.JWT_SECRET, settings.JWT_PUBLIC_KEY)


@functools.lru_cache(maxsize=4)
def _keys_for(secret: str, pem: str) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    if secret:
        keys["HS256"] = secret
    if pem:
        key = load_pem_public_key(pem.encode())
        keys["RS256" if isinstance(key, rsa.RSAPublicKey) else "ES256"] = key
    return keys


def verify(raw: str, **required: str) -> Claims:
    """The claims of a valid connection token; `Refused` otherwise. `required` names
    further string claims that must hold exactly that value (a subscription token's
    `topic`)."""
    if not enabled() or not looks_like_jwt(raw):
        raise Refused("not a connection token")
    try:
        algorithm = jwt.get_unverified_header(raw).get("alg")
    except jwt.PyJWTError as error:
        raise Refused(f"malformed token: {error}") from None
    keys = _keys()
    if algorithm not in keys:
        raise Refused(f"algorithm {algorithm!r} is not the one configured")
    try:
        claims = jwt.decode(
            raw,
            keys[algorithm],
            algorithms=[algorithm],
            audience=settings.JWT_AUDIENCE or None,
            issuer=settings.JWT_ISSUER or None,
            options={"require": ["sub", "exp"], "verify_aud": bool(settings.JWT_AUDIENCE)},
        )
    except jwt.PyJWTError as error:
        raise Refused(str(error)) from None
    sub = claims["sub"]
    if not valid_sub(sub):
        raise Refused(f"`sub` must be a string of 1 to {MAX_SUB_CHARS} characters")
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise Refused("`exp` must be a number")
    for claim, value in required.items():
        if claims.get(claim) != value:
            raise Refused(f"`{claim}` does not match")
    name = claims.get("name")
    return Claims(sub, int(exp), name if isinstance(name, str) else None)
