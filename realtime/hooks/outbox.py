"""The outbox: events for the application's backend, written in the transaction of the
change they tell of (PROTOCOL 13; docs/architecture.md, "The outbox").

Rows are written only while `WEBHOOK_URL` is set: without a receiver nothing
would ever deliver them, and the send path pays nothing. A committed change thus
always has its events stored, a rolled-back one never; any node delivers them
(realtime/hooks/queue.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from realtime.models import LiveConnection, Membership, OutboxEvent, PushSubscription
from realtime.node.db import any_of, is_postgres, values_table
from realtime.protocol import encode, user_repr

CONVERSATION_EVENT = "conversation.event"
MEMBER_JOINED = "member.joined"
MEMBER_LEFT = "member.left"
PRESENCE_ONLINE = "presence.online"
PRESENCE_OFFLINE = "presence.offline"
NOTIFY_OFFLINE = "notify.offline"
# A Web Push to one subscription (PROTOCOL 14), not a webhook: realtime/hooks/pushes.py.
PUSH_MESSAGE = "push.message"
# What of a message a push carries (PROTOCOL 14).
PUSH_BODY_CHARS = 100


def enabled() -> bool:
    """Whether events are recorded at all (a receiver is configured)."""
    return bool(settings.WEBHOOK_URL)


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Event:
    """One event to deliver: `data` is its JSON text, encoded once here."""

    type: str
    order_key: str
    data: str
    ts: int
    event_id: str = field(default_factory=new_event_id)


def event(type_: str, order_key: str, data: dict[str, Any], ts: int) -> Event:
    return Event(type_, order_key, encode(data), ts)


def presence_key(user_id: int) -> str:
    """A user's presence events keep their order (online, then offline) among themselves."""
    return f"user:{user_id}"


def push_key(subscription_id: int) -> str:
    """A subscription's pushes keep their order among themselves, and wait for none else."""
    return f"push:{subscription_id}"


def record(events: list[Event]) -> None:
    """Write events inside the caller's transaction (ORM: the paths that are not hot)."""
    if not events:
        return
    now = timezone.now()
    OutboxEvent.objects.bulk_create(
        [
            OutboxEvent(
                event_id=e.event_id,
                type=e.type,
                data=e.data,
                ts=e.ts,
                order_key=e.order_key,
                next_attempt_at=now,
                queued_at=now,
            )
            for e in events
        ]
    )


def _table(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


SQLITE_ROWS = 400


def insert(cursor: Any, events: list[Event]) -> None:
    """The same as `record`, as one statement on the caller's cursor (the batched send
    path: it joins that path's last round trip). Rows get ids in list order."""
    if not events:
        return
    if not is_postgres() and len(events) > SQLITE_ROWS:
        # SQLite takes at most 500 terms in a compound SELECT (values_table's form).
        for start in range(0, len(events), SQLITE_ROWS):
            insert(cursor, events[start : start + SQLITE_ROWS])
        return
    values, params = values_table(
        [
            ("event_id", "text"),
            ("type", "text"),
            ("data", "text"),
            ("ts", "bigint"),
            ("order_key", "text"),
        ],
        [(e.event_id, e.type, e.data, e.ts, e.order_key) for e in events],
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    cursor.execute(
        f"INSERT INTO {_table(OutboxEvent)} (event_id, type, data, ts, order_key, state, "
        "attempts, next_attempt_at, last_error, queued_at) "
        "SELECT event_id, type, data, ts, order_key, 'pending', 0, %s, '', %s "
        f"FROM ({values}) AS v",
        [now, now, *params],
    )


Offline = dict[str, list[tuple[int, dict[str, Any]]]]  # conversation → (user id, user repr)


def offline_members(cursor: Any, conversation_ids: list[str]) -> Callable[[], Offline]:
    """The members of these conversations with no open chat socket on any node, from the
    live registry, in one statement (an anti-join on the registry's (user, endpoint)
    index: cheap for groups of 1,000). Read the result after the round trip."""
    if not conversation_ids:
        return dict
    users = get_user_model()
    where, params = any_of("m.conversation_id", sorted(conversation_ids))
    cursor.execute(
        f"SELECT m.conversation_id, u.id, u.username, u.external_id "
        f"FROM {_table(Membership)} m JOIN {_table(users)} u ON u.id = m.user_id "
        f"WHERE {where} AND NOT EXISTS (SELECT 1 FROM {_table(LiveConnection)} c "
        "WHERE c.user_id = m.user_id AND c.endpoint = 'chat')",
        params,
    )

    def read() -> Offline:
        out: Offline = {}
        for cid, uid, username, external_id in cursor.fetchall():
            shown = user_repr(users(id=uid, username=username, external_id=external_id))
            out.setdefault(cid, []).append((uid, shown))
        return out

    return read


Subscribed = dict[str, list[tuple[int, int]]]  # conversation → (user id, subscription id)


def push_targets(cursor: Any, conversation_ids: list[str]) -> Callable[[], Subscribed]:
    """The push subscriptions of these conversations' members with no open chat socket
    on any node (the members `notify.offline` names), in one statement that starts
    from the subscriptions: nothing to read when nobody subscribed. Read the result
    after the round trip."""
    if not conversation_ids:
        return dict
    where, params = any_of("m.conversation_id", sorted(conversation_ids))
    # A disabled account's browsers are told nothing (its sockets were closed too).
    cursor.execute(
        f"SELECT m.conversation_id, s.user_id, s.id FROM {_table(PushSubscription)} s "
        f"JOIN {_table(Membership)} m ON m.user_id = s.user_id "
        f"JOIN {_table(get_user_model())} u ON u.id = s.user_id AND u.is_active "
        f"WHERE {where} AND NOT EXISTS (SELECT 1 FROM {_table(LiveConnection)} c "
        "WHERE c.user_id = s.user_id AND c.endpoint = 'chat') ORDER BY s.id",
        params,
    )

    def read() -> Subscribed:
        out: Subscribed = {}
        for cid, uid, sid in cursor.fetchall():
            out.setdefault(cid, []).append((uid, sid))
        return out

    return read


def push_payload(message: Any) -> dict[str, Any]:
    """What a push tells of a stored message (PROTOCOL 14): no more than a notification
    shows, since it leaves through a third party's push service."""
    sender = message.sender
    return {
        "type": "message",
        "conversation": message.conversation_id,
        "seq": message.seq,
        "message_id": message.id,
        "sender": None if sender is None else {"id": sender.pk, "username": sender.username},
        "body": message.body[:PUSH_BODY_CHARS],
    }


def pushes(message: Any, targets: Subscribed) -> list[Event]:
    """One push row per subscription of each member but the sender."""
    payload: dict[str, Any] | None = None
    out = []
    for uid, sid in targets.get(message.conversation_id, ()):
        if uid == message.sender_id:
            continue
        payload = payload or push_payload(message)
        data = {"subscription": sid, "user": uid, "payload": payload}
        out.append(event(PUSH_MESSAGE, push_key(sid), data, message.ts))
    return out
