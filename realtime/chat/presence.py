"""Online/offline across nodes, decided under the user's Presence row lock.

Each transition is evaluated from the live connection records, so two sockets
of one user opening or closing at once on two nodes give exactly one `online`
or `offline` (docs/architecture.md, rule 9), and a reaped node's users go offline.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from realtime.models import LiveConnection, Membership, Presence
from realtime.protocol import storable_int

ONLINE = "online"
OFFLINE = "offline"


def update(user_id: int, on_change: Callable[[str], None] | None = None) -> str | None:
    """Re-evaluate a user's status; the new status if it changed, else None.
    `on_change(status)` runs inside the transaction that stores a change (the
    outbox's row commits with it)."""
    try:
        Presence.objects.get_or_create(user_id=user_id)
    except IntegrityError:
        pass  # created concurrently
    with transaction.atomic():
        row = Presence.objects.select_for_update().get(user_id=user_id)
        online = LiveConnection.objects.filter(user_id=user_id, endpoint="chat").exists()
        if online == row.online:
            return None
        row.online = online
        row.changed_at = timezone.now()
        row.save(update_fields=["online", "changed_at"])
        status = ONLINE if online else OFFLINE
        if on_change is not None:
            on_change(status)
    return status


def query(user_ids: list[int]) -> dict[str, str]:
    """`{"<id>": "online" | "offline"}` for each asked user (no such user: offline)."""
    stored = [uid for uid in user_ids if storable_int(uid)]
    online = set(
        Presence.objects.filter(user_id__in=stored, online=True).values_list("user_id", flat=True)
    )
    return {str(uid): ONLINE if uid in online else OFFLINE for uid in user_ids}


def audience(user_id: int) -> list[int]:
    """Who hears of `user_id`'s presence: users sharing at least one conversation."""
    return list(
        Membership.objects.filter(conversation__memberships__user_id=user_id)
        .exclude(user_id=user_id)
        .values_list("user_id", flat=True)
        .distinct()
    )


def conversations_of(user_id: int) -> list[str]:
    """The user's conversations: a presence's audience must still share one of them
    when it arrives (chat/fanout.py, `still_shares`)."""
    return list(
        Membership.objects.filter(user_id=user_id).values_list("conversation_id", flat=True)
    )
