"""One push request (RFC 8030): the payload encrypted for the subscription with
`aes128gcm` (RFC 8291, by pywebpush and http-ece) and the VAPID header (RFC 8292).
CPU work, no I/O: the delivery runs it on a pool thread."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from pywebpush import WebPusher

from realtime.push import vapid

# How long a push service keeps a push for a device that is offline. A day, as
# long as the outbox retries (WEBHOOK_MAX_AGE's default): news of a message older
# than that is better read in the app than as a notification.
TTL_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class PushRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def build(endpoint: str, p256dh: str, auth: str, payload: bytes) -> PushRequest:
    """The request that delivers `payload` to one subscription. Raises ValueError for
    keys that are not a P-256 point and a 16-byte secret."""
    body = encrypt(endpoint, p256dh, auth, payload)
    headers = {
        "Authorization": vapid.authorization(endpoint),
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "TTL": str(TTL_SECONDS),
        "Urgency": "normal",
        "User-Agent": "Tether-Push/1",
    }
    return PushRequest(endpoint, headers, body)


def encrypt(endpoint: str, p256dh: str, auth: str, payload: bytes) -> bytes:
    """The `aes128gcm` body: a fresh sender key and salt each time (RFC 8291, section 3)."""
    try:
        if len(base64.urlsafe_b64decode(auth + "=" * (-len(auth) % 4))) != 16:
            raise ValueError("auth must be 16 bytes")
        pusher = WebPusher({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}})
        return pusher.encode(payload, "aes128gcm")["body"]
    except Exception as exc:  # pywebpush, http-ece and cryptography raise several types
        raise ValueError(f"cannot encrypt for this subscription: {exc}") from None


def valid_keys(p256dh: object, auth: object) -> bool:
    """Whether a subscription's keys can be encrypted for (checked at registration)."""
    if not isinstance(p256dh, str) or not isinstance(auth, str):
        return False
    if len(p256dh) > 100 or len(auth) > 40:
        return False
    try:
        encrypt("https://push.invalid/", p256dh, auth, b"-")
    except ValueError:
        return False
    return True
