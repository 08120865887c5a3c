"""The outbox (PROTOCOL 13): rows written with their change and only then, the batched
send path's rows in its own round trips, `notify.offline` from the live registry,
the queue's claims, leases and retries, and the signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from realtime.chat import conversations, sends
from realtime.chat.conversations import new_conversation_id
from realtime.chat.sends import SendRequest, store_sends
from realtime.hooks import outbox, queue, signing
from realtime.models import Conversation, LiveConnection, Membership, Node, OutboxEvent
from realtime.node.db import is_postgres
from tests.support.names import unique
from tests.support.services import postgres_service, rerun_on_postgresql  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hooked(settings: Any) -> None:
    settings.WEBHOOK_URL = "http://127.0.0.1:9/hook"
    settings.WEBHOOK_SECRET = "s"


def users(n: int) -> list[User]:
    tag = unique("o")
    User.objects.bulk_create([User(username=f"{tag}-{i}") for i in range(n)])
    return list(User.objects.filter(username__startswith=f"{tag}-").order_by("id"))


def conversation(*members: User) -> str:
    conv = Conversation.objects.create(
        id=new_conversation_id(), kind="group", title="t", created_by=members[0]
    )
    Membership.objects.bulk_create([Membership(conversation=conv, user=u) for u in members])
    return conv.id


def online(*people: User) -> None:
    """A chat socket on some node for each (the live registry)."""
    node, _ = Node.objects.get_or_create(name="elsewhere")
    for user in people:
        LiveConnection.objects.create(
            id=unique("c"), node=node, user=user, endpoint="chat", channel_name="x", auth_ref="r"
        )


def rows(key: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.type, json.loads(e.data))
        for e in OutboxEvent.objects.filter(order_key=key).order_by("id")
    ]


def test_the_body_and_signature_are_as_the_protocol_writes_them() -> None:
    raw = signing.body("evt_1", "member.joined", 1732300000123, '{"conversation":"k3"}')
    assert json.loads(raw) == {
        "id": "evt_1",
        "type": "member.joined",
        "ts": 1732300000123,
        "data": {"conversation": "k3"},
    }
    mac = hmac.new(b"secret", b"1732300000." + raw, hashlib.sha256).hexdigest()
    headers = signing.headers("secret", "evt_1", 1732300000, raw)
    assert headers["Tether-Signature"] == f"v1={mac}"
    assert headers["Tether-Timestamp"] == "1732300000"
    assert headers["Tether-Event-Id"] == "evt_1"


def test_a_batch_writes_its_events_in_its_round_trips(hooked: None) -> None:
    """Messages, then a `notify.offline` for each member without a chat socket, in
    seq order per conversation; two statements more for the whole batch."""
    a, b, c = users(3)
    one, two = conversation(a, b, c), conversation(b, c)
    online(b)
    requests = [
        SendRequest(a, one, "a1", "x"),
        SendRequest(b, two, "b1", "y"),
        SendRequest(b, one, "b2", "z"),
    ]
    with CaptureQueriesContext(connection) as hooked_batch:
        store_sends(requests)
    assert [(t, d.get("seq"), d.get("user", {}).get("id")) for t, d in rows(one)] == [
        ("conversation.event", 1, None),
        ("notify.offline", 1, c.pk),
        ("conversation.event", 2, None),
        ("notify.offline", 2, a.pk),
        ("notify.offline", 2, c.pk),
    ]
    event = rows(one)[0][1]
    assert event["kind"] == "message" and event["body"] == "x" and event["sender"]["id"] == a.pk
    notify = rows(one)[1][1]
    assert set(notify) == {"user", "conversation", "seq", "message_id"}
    assert [t for t, _ in rows(two)] == ["conversation.event", "notify.offline"]
    # The same batch without webhooks: the difference is the two statements.
    d, e = users(2)
    three = conversation(d, e)
    with override_url(""), CaptureQueriesContext(connection) as plain_batch:
        store_sends([SendRequest(d, three, "d1", "x"), SendRequest(e, three, "e1", "y")])
    if not is_postgres():  # PostgreSQL's statements bypass Django's cursor (db.bound_cursor)
        assert len(hooked_batch) - len(plain_batch) == 2
    assert rows(three) == []


def override_url(url: str) -> Any:
    from django.test import override_settings

    return override_settings(WEBHOOK_URL=url)


def test_notify_offline_for_a_group_of_1000_is_one_statement(hooked: None) -> None:
    people = users(1000)
    cid = conversation(*people)
    online(*people[:100])
    with CaptureQueriesContext(connection) as one_send:
        sends.send(people[0], cid, "k", "hello")
    notified = [d["user"]["id"] for t, d in rows(cid) if t == "notify.offline"]
    assert sorted(notified) == [u.pk for u in people[100:]]
    small = users(2)
    other = conversation(*small)
    with CaptureQueriesContext(connection) as small_send:
        sends.send(small[0], other, "k2", "hello")
    if not is_postgres():  # PostgreSQL's statements bypass Django's cursor (db.bound_cursor)

        def others(captured: CaptureQueriesContext) -> list[str]:
            # SQLite takes the outbox's rows in inserts of 400 at most.
            return [q["sql"] for q in captured if "INSERT INTO" not in q["sql"]]

        assert len(others(one_send)) == len(others(small_send))
        # notify.offline's look at the registry, and Web Push's (from the subscriptions).
        assert sum("realtime_liveconnection" in q for q in others(one_send)) == 2


def test_rows_commit_with_their_change_and_never_without(hooked: None) -> None:
    a, b, c = users(3)
    group = conversations.check_create_group(a, "t", [b.pk])
    assert [d["user"]["id"] for t, d in rows(group.id)] == [a.pk, b.pk]
    with pytest.raises(RuntimeError), transaction.atomic():
        conversations.do_add_member(group, c)
        raise RuntimeError("rolled back")
    assert len(rows(group.id)) == 2
    conversations.check_remove_member(a, group.id, b.pk)
    assert rows(group.id)[-1] == (
        "member.left",
        {"conversation": group.id, "user": {"id": b.pk, "username": b.username}},
    )


def test_nothing_is_written_without_a_webhook_url(settings: Any) -> None:
    settings.WEBHOOK_URL = ""
    a, b = users(2)
    group = conversations.check_create_group(a, "t", [b.pk])
    sends.send(a, group.id, "k", "hello")
    conversations.check_remove_member(a, group.id, b.pk)
    assert not OutboxEvent.objects.exists()


def test_the_queue_hands_out_each_conversations_oldest_event_only() -> None:
    for key, n in (("ka", 1), ("ka", 2), ("kb", 1), ("ka", 3)):
        outbox.record([outbox.event("conversation.event", key, {"n": n}, 0)])
    first = queue.claim(10, 30)
    assert [(json.loads(c.data)["n"], c.attempts) for c in first] == [(1, 1), (1, 1)]
    assert queue.claim(10, 30) == []  # leased
    a1, b1 = first
    later = timezone.now() + timedelta(seconds=60)
    queue.finish(
        [
            queue.Outcome(a1.id, a1.attempts, True, 200, "", None),
            queue.Outcome(b1.id, b1.attempts, False, 500, "HTTP 500", later),
        ]
    )
    (a2,) = queue.claim(10, 30)
    assert json.loads(a2.data)["n"] == 2
    # A result from an earlier claim of the same event (its lease ran out) is dropped.
    queue.finish([queue.Outcome(a2.id, a2.attempts - 1, False, None, "late", None)])
    assert OutboxEvent.objects.get(id=a2.id).state == "pending"
    queue.finish([queue.Outcome(a2.id, a2.attempts, False, None, "gone", None)])
    assert OutboxEvent.objects.get(id=a2.id).state == "failed"
    # Given up, the next one goes; the retry action puts the failed one back.
    assert [json.loads(c.data)["n"] for c in queue.claim(10, 30)] == [3]
    assert queue.retry([a2.id]) == 1
    row = OutboxEvent.objects.get(id=a2.id)
    assert (row.state, row.attempts, row.finished_at) == ("pending", 0, None)


def test_retry_delays_grow_and_stop_at_the_maximum_age() -> None:
    assert 0.5 <= queue.retry_delay(1) <= 1 and 4 <= queue.retry_delay(4) <= 8
    assert queue.retry_delay(40) <= queue.RETRY_CAP_SECONDS
    now = timezone.now()
    fresh = queue.Claimed(1, "evt", "t", "{}", 0, 3, now)
    assert queue.next_attempt(fresh, 3600, now) is not None
    old = queue.Claimed(1, "evt", "t", "{}", 0, 3, now - timedelta(seconds=3599))
    assert queue.next_attempt(old, 3600, now) is None


@pytest.mark.django_db(transaction=False)
def test_the_same_holds_on_postgresql(postgres_service) -> None:  # noqa: F811
    """PostgreSQL takes other paths (arrays, pipeline mode, SKIP LOCKED): run this file there."""
    rerun_on_postgresql(__file__, postgres_service, "not on_postgresql")
