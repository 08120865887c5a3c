"""Web Push rows of the outbox (PROTOCOL 14): each is one push to one subscription.

`prepare` runs on a pool thread for the pushes a claim brought: it reads their
subscriptions in one query, checks each endpoint again (a name may have been
re-pointed since it was registered: realtime/push/endpoints.py) and encrypts and
signs each request (CPU work that stays off the event loop). `verdict` reads a
push service's answer (RFC 8030, section 8.2 and 5.1; RFC 6585 for 429).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from realtime.hooks.queue import Claimed
from realtime.models import PushSubscription
from realtime.push import endpoints, webpush
from realtime.push.webpush import PushRequest

SEND = "send"
DROP = "drop"  # the subscription is gone: finished, not retried
REFUSE = "refuse"  # the endpoint is not allowed any more: given up now
RETRY = "retry"  # the endpoint's name does not resolve now: retried as a failure


@dataclass(frozen=True, slots=True)
class Prepared:
    action: str
    subscription_id: int
    request: PushRequest | None = None
    error: str = ""


def subscription_of(event: Claimed) -> int:
    return int(json.loads(event.data)["subscription"])


def prepare(claimed: list[Claimed]) -> dict[int, Prepared]:
    """Each push's request, or why it is not sent, by outbox row id."""
    wanted = {c.id: json.loads(c.data) for c in claimed}
    rows = PushSubscription.objects.in_bulk({d["subscription"] for d in wanted.values()})
    out: dict[int, Prepared] = {}
    resolved: dict[str, list[str]] = {}  # most pushes of a claim go to a few push services

    def resolve(host: str) -> list[str]:
        if host not in resolved:
            resolved[host] = endpoints.resolve(host)
        return resolved[host]

    for row_id, data in wanted.items():
        sid = data["subscription"]
        subscription = rows.get(sid)
        if subscription is None:
            out[row_id] = Prepared(DROP, sid, error="subscription removed")
            continue
        why = endpoints.problem(subscription.endpoint, resolve)
        if why is not None:
            action = RETRY if "does not resolve" in why else REFUSE
            out[row_id] = Prepared(action, sid, error=f"endpoint {why}")
            continue
        payload = json.dumps(data["payload"], separators=(",", ":"), ensure_ascii=False)
        try:
            request = webpush.build(
                subscription.endpoint, subscription.p256dh, subscription.auth, payload.encode()
            )
        except ValueError as exc:
            out[row_id] = Prepared(REFUSE, sid, error=str(exc))
            continue
        out[row_id] = Prepared(SEND, sid, request)
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    delivered: bool
    gone: bool  # 404 or 410: remove the subscription
    retry: bool
    retry_after: float  # seconds the push service asked to wait (0: none)


def retry_after(value: str | None, now: float | None = None) -> float:
    """`Retry-After` in seconds: delay-seconds or an HTTP date (RFC 9110, 10.2.3)."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0
    return max(0.0, when - (time.time() if now is None else now))


def verdict(status: int, retry_after_header: str | None) -> Verdict:
    """2xx delivered; 404/410 the subscription expired or was unsubscribed; 429 and 5xx
    retried, no sooner than `Retry-After`; any other answer (400 malformed, 401/403
    VAPID refused, 413 too large) would be answered the same again: given up."""
    if 200 <= status < 300:
        return Verdict(True, False, False, 0.0)
    if status in (404, 410):
        return Verdict(False, True, False, 0.0)
    if status == 429 or status >= 500:
        return Verdict(False, False, True, retry_after(retry_after_header))
    return Verdict(False, False, False, 0.0)
