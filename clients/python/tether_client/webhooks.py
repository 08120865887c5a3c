"""Verifying Tether's webhook requests (PROTOCOL 13).

Tether signs `<Tether-Timestamp>.<raw body>` with HMAC-SHA256 and `WEBHOOK_SECRET`
and sends `Tether-Signature: v1=<hex>`. Verify the raw bytes as received: a body
parsed and serialized again no longer matches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from .errors import WebhookVerificationError

SCHEME = "v1"
DEFAULT_TOLERANCE = 300


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Frameworks differ in header case (and some hand over a plain dict).
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def signature(secret: str | bytes, timestamp: int | str, raw_body: str | bytes) -> str:
    """The `Tether-Signature` header value for a body sent at `timestamp`."""
    message = str(timestamp).encode() + b"." + _as_bytes(raw_body)
    digest = hmac.new(_as_bytes(secret), message, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def verify_webhook(
    secret: str | bytes,
    headers: Mapping[str, str],
    raw_body: str | bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a webhook request and return its decoded event.

    Raises `WebhookVerificationError` when a header is missing, the signature does
    not match (compared in constant time), or the timestamp is more than
    `tolerance` seconds away from now (a replayed request).
    """
    timestamp = _header(headers, "Tether-Timestamp")
    sent = _header(headers, "Tether-Signature")
    if not timestamp or not sent:
        raise WebhookVerificationError(detail="Tether-Timestamp or Tether-Signature missing")
    try:
        when = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(detail="Tether-Timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - when) > tolerance:
        raise WebhookVerificationError(detail="Tether-Timestamp outside the tolerance")
    expected = signature(secret, timestamp, raw_body)
    # A header may list several signatures (a secret being rotated): any v1 may match.
    candidates = [part.strip() for part in sent.split(",")]
    wanted = expected.encode()
    if not any(hmac.compare_digest(wanted, c.encode()) for c in candidates if c.startswith("v1=")):
        raise WebhookVerificationError(detail="signature mismatch")
    try:
        event = json.loads(raw_body)
    except ValueError:
        raise WebhookVerificationError(detail="body is not JSON") from None
    event_id = _header(headers, "Tether-Event-Id")
    if event_id is not None and isinstance(event, dict) and event.get("id") != event_id:
        raise WebhookVerificationError(detail="Tether-Event-Id does not match the body")
    return event
