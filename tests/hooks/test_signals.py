"""Django signals for code in the project (realtime/signals.py): sent after commit by the
one way out, for the batched socket path and the REST path alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import transaction
from django.dispatch import Signal

from realtime import signals
from realtime.chat import conversations, events, sends
from realtime.chat.send_queue import SendQueue
from realtime.chat.sends import SendRequest
from realtime.models import LiveConnection, Membership, Node
from tests.support.focused import group, person
from tests.support.names import unique

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def heard() -> Iterator[dict[str, list[dict[str, Any]]]]:
    """What each signal's receiver got, with whether a transaction was open then."""
    got: dict[str, list[dict[str, Any]]] = {}
    connected: list[tuple[Signal, Any]] = []
    for name in ("message_event_stored", "member_joined", "member_left", "presence_changed"):
        signal: Signal = getattr(signals, name)

        def receiver(sender: Any, name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal")
            got.setdefault(name, []).append(
                {"sender": sender, "in_transaction": transaction.get_connection().in_atomic_block}
                | kwargs
            )

        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))
    yield got
    for signal, receiver in connected:
        signal.disconnect(receiver)


async def test_messages_from_the_batched_path_and_from_rest(heard) -> None:
    (alice, _), (bob, _) = await person(), await person()
    conv = await group(alice, bob)
    queue = SendQueue()
    sent = await queue.send(SendRequest(alice, conv.id, unique("k"), "from a socket"))
    await database_sync_to_async(sends.send)(bob, conv.id, unique("k"), "from REST")
    first, second = heard["message_event_stored"]
    assert first["event"] == {
        "conversation": conv.id,
        "seq": 1,
        "kind": "message",
        "message_id": sent.message.id,
        "client_id": sent.message.client_id,
        "sender": {"id": alice.pk, "username": alice.username},
        "body": "from a socket",
        "ts": sent.message.ts,
        "reply_to": None,
        "attachments": [],
        "edited_at": None,
        "deleted": False,
        "reactions": {},
    }
    assert second["event"]["seq"] == 2 and second["event"]["body"] == "from REST"
    assert not first["in_transaction"] and not second["in_transaction"]


def test_members_after_commit_and_never_for_a_rollback(heard) -> None:
    from accounts.models import User

    alice, bob, carol = (User.objects.create(username=unique("s")) for _ in range(3))
    conv = conversations.check_create_group(alice, "t", [bob.pk])
    assert [(j["conversation"], j["user"]["id"]) for j in heard["member_joined"]] == [
        (conv.id, alice.pk),
        (conv.id, bob.pk),
    ]
    assert not any(j["in_transaction"] for j in heard["member_joined"])
    with pytest.raises(RuntimeError), transaction.atomic():
        conversations.do_add_member(conv, carol)
        raise RuntimeError("rolled back")
    assert len(heard["member_joined"]) == 2
    conversations.check_remove_member(alice, conv.id, bob.pk)
    (left,) = heard["member_left"]
    assert left["user"] == {"id": bob.pk, "username": bob.username}
    assert left["sender"] is Membership and left["conversation"] == conv.id


async def test_presence_changes(heard) -> None:
    alice, _ = await person()  # who shares no conversation: receivers hear of it all the same

    @database_sync_to_async
    def connect() -> str:
        node, _ = Node.objects.get_or_create(name="elsewhere")
        return LiveConnection.objects.create(
            id=unique("c"), node=node, user=alice, endpoint="chat", channel_name="x", auth_ref="r"
        ).id

    cid = await connect()
    await events.presence_changed(alice.pk)
    await events.presence_changed(alice.pk)  # no change: no signal
    await database_sync_to_async(LiveConnection.objects.filter(id=cid).delete)()
    await events.presence_changed(alice.pk)
    statuses = [(p["user"]["id"], p["status"]) for p in heard["presence_changed"]]
    assert statuses == [(alice.pk, "online"), (alice.pk, "offline")]
    assert all(isinstance(p["ts"], int) for p in heard["presence_changed"])
