"""The server's VAPID identity (RFC 8292): the public key browsers subscribe with,
and the `Authorization` header each push carries for its endpoint's origin."""

from __future__ import annotations

import base64
import functools
import threading
import time
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from py_vapid import Vapid02

# A token is valid for 12 h (RFC 8292 allows at most 24 h) and signed again after 6 h:
# one ES256 signature per push service origin and a few hours, not one per push.
TOKEN_SECONDS = 12 * 3600
RESIGN_AFTER_SECONDS = 6 * 3600

_lock = threading.Lock()
_tokens: dict[tuple[str, str, str], tuple[float, str]] = {}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@functools.lru_cache(maxsize=4)
def _key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def public_key() -> str:
    """The application server key for `pushManager.subscribe`: the uncompressed P-256
    point, base64url without padding."""
    point = (
        _key(settings.VAPID_PRIVATE_KEY)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return _b64url(point)


def origin(endpoint: str) -> str:
    """`scheme://host[:port]` of an endpoint: the token's `aud`."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def authorization(endpoint: str, now: float | None = None) -> str:
    """`vapid t=<JWT>, k=<public key>` for the endpoint's push service."""
    now = time.time() if now is None else now
    audience = origin(endpoint)
    cache_key = (settings.VAPID_PRIVATE_KEY, settings.VAPID_SUBJECT, audience)
    with _lock:
        signed_at, header = _tokens.get(cache_key, (0.0, ""))
        if header and now - signed_at < RESIGN_AFTER_SECONDS:
            return header
    claims = {"aud": audience, "exp": int(now) + TOKEN_SECONDS, "sub": settings.VAPID_SUBJECT}
    header = Vapid02(_key(settings.VAPID_PRIVATE_KEY)).sign(claims)["Authorization"]
    with _lock:
        _tokens[cache_key] = (now, header)
    return header
