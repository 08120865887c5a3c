"""A webhook request's body and headers, signed as PROTOCOL 13 says (pure, no I/O)."""

from __future__ import annotations

import hashlib
import hmac
import json


def body(event_id: str, type_: str, ts: int, data: str) -> bytes:
    """`{"id", "type", "ts", "data"}` around the data's JSON text as it was stored."""
    head = f'{{"id":{json.dumps(event_id)},"type":{json.dumps(type_)},"ts":{int(ts)},"data":'
    return (head + data + "}").encode()


def signature(secret: str, timestamp: int, raw_body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256 with `secret` over `<timestamp>.<raw body>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def headers(secret: str, event_id: str, timestamp: int, raw_body: bytes) -> dict[str, str]:
    """The request's headers; `timestamp` in Unix seconds, the time of this attempt."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "Tether-Webhooks/1",
        "Tether-Event-Id": event_id,
        "Tether-Timestamp": str(timestamp),
        "Tether-Signature": signature(secret, timestamp, raw_body),
    }
