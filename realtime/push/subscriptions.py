"""Push subscriptions, per user and endpoint (PROTOCOL 14)."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from realtime.models import PushSubscription
from realtime.protocol import bad_request
from realtime.push import endpoints, webpush

# A user's browsers, profiles and devices; past this the oldest goes (a browser that
# renews its subscription leaves the old one behind until its push service says 410).
MAX_PER_USER = 20


def subscribe(user: Any, data: dict[str, Any]) -> bool:
    """Register `PushSubscription.toJSON()` for the user; True when new. `bad_request`
    naming the field at fault."""
    endpoint = data.get("endpoint")
    why = endpoints.problem(endpoint)
    if why is not None:
        raise bad_request("endpoint", why)
    keys = data.get("keys")
    if not isinstance(keys, dict) or not webpush.valid_keys(keys.get("p256dh"), keys.get("auth")):
        raise bad_request("keys", "must be {p256dh, auth}: a P-256 public key and a 16-byte secret")
    fields = {"p256dh": keys["p256dh"], "auth": keys["auth"]}
    try:
        with transaction.atomic():
            _row, created = PushSubscription.objects.update_or_create(
                user=user, endpoint=endpoint, defaults=fields
            )
    except IntegrityError:  # the same subscription posted twice at once
        PushSubscription.objects.filter(user=user, endpoint=endpoint).update(**fields)
        return False
    if created:
        stale = PushSubscription.objects.filter(user=user).order_by("-created_at", "-id")
        stale_ids = list(stale.values_list("id", flat=True)[MAX_PER_USER:])
        if stale_ids:
            PushSubscription.objects.filter(id__in=stale_ids).delete()
    return created


def unsubscribe(user: Any, endpoint: object) -> None:
    """Remove the user's subscription to `endpoint` (nothing when there is none: only
    its owner's can be removed, and asking twice is no error)."""
    if not isinstance(endpoint, str) or not endpoint:
        raise bad_request("endpoint", "must be the subscription's endpoint URL (a string)")
    if len(endpoint) > endpoints.MAX_LENGTH:  # none registered is longer
        raise bad_request("endpoint", f"must be at most {endpoints.MAX_LENGTH} characters")
    PushSubscription.objects.filter(user=user, endpoint=endpoint).delete()


def remove(subscription_id: int) -> None:
    """The push service says the subscription is gone (404, 410)."""
    PushSubscription.objects.filter(id=subscription_id).delete()
