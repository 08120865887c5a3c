"""Chat news out through chat/events.py and in through chat/fanout.py, on real sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction

from realtime.chat import conversations, events, messages
from realtime.models import Conversation, LiveConnection, Membership, Message
from realtime.node import control
from realtime.protocol import now_ms
from tests.support.focused import WAIT, chat, group, person
from tests.support.names import unique

pytestmark = pytest.mark.django_db(transaction=True)

QUIET = 0.3  # how long "nothing arrives" is watched for


class Rollback(Exception):
    """Raised to roll a test's transaction back."""


async def joined(*comms: WebsocketCommunicator) -> None:
    """Each socket hears `joined` (the only frame a socket connected first gets)."""
    for comm in comms:
        assert (await comm.receive_json_from(WAIT))["type"] == "joined"


@database_sync_to_async
def in_transaction(change: Callable[[], None], commit: bool) -> None:
    """`change` in a transaction that commits, or is rolled back."""
    try:
        with transaction.atomic():
            change()
            if not commit:
                raise Rollback
    except Rollback:
        pass


@pytest.fixture
def send_where_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every control message chat/events.py sends, recorded and then really sent."""
    calls: list[dict[str, Any]] = []
    real = control.send_where

    def spy(message: dict[str, Any], **filters: Any) -> int:
        calls.append(message)
        return real(message, **filters)

    monkeypatch.setattr(control, "send_where", spy)
    return calls


async def test_membership_news_leaves_only_after_commit(runtime, send_where_calls) -> None:
    """`joined`/`left` are sent once the change commits, never for a rolled-back one."""
    (alice, a_token), (bob, b_token) = await person(), await person()
    a, b = await chat(a_token, synced=True), await chat(b_token, synced=True)
    cid = conversations.new_conversation_id()
    inside: list[int] = []  # control messages sent by the time the change returns

    def create() -> None:
        conv = Conversation.objects.create(id=cid, kind="group", title="t", created_by=alice)
        Membership.objects.bulk_create(
            [Membership(conversation=conv, user=u) for u in (alice, bob)]
        )
        events.members_joined(cid, [alice.pk, bob.pk])
        inside.append(len(send_where_calls))

    def leave() -> None:
        Membership.objects.filter(conversation_id=cid, user=bob).delete()
        events.member_left(cid, bob.pk)
        inside.append(len(send_where_calls))

    await in_transaction(create, commit=False)
    assert inside == [0] and send_where_calls == []
    assert await a.receive_nothing(QUIET)
    assert await b.receive_nothing(QUIET)
    await in_transaction(create, commit=True)
    assert inside[-1] == 0 and len(send_where_calls) == 1  # not inside, once after
    for comm in (a, b):
        frame = await comm.receive_json_from(WAIT)
        assert frame["type"] == "joined" and frame["conversation"]["id"] == cid
    await in_transaction(leave, commit=False)
    assert inside[-1] == 1 and len(send_where_calls) == 1
    assert await b.receive_nothing(QUIET)  # still a member: no `left`
    await in_transaction(leave, commit=True)
    assert inside[-1] == 1 and len(send_where_calls) == 2
    assert await b.receive_json_from(WAIT) == {"type": "left", "conversation": cid}
    assert await a.receive_nothing(QUIET)  # the remaining members are not told
    await a.disconnect()
    await b.disconnect()


async def test_a_stored_message_is_delivered_only_after_commit(runtime) -> None:
    """`message_stored` inside a rolled-back transaction reaches no socket."""
    (alice, a_token), (bob, b_token) = await person(), await person()
    a, b = await chat(a_token, synced=True), await chat(b_token, synced=True)
    conv = await group(alice, bob)
    await joined(a, b)

    def store() -> None:
        seq = Conversation.objects.get(pk=conv.pk).last_seq + 1
        Conversation.objects.filter(pk=conv.pk).update(last_seq=seq)
        message = Message.objects.create(
            id=messages.new_message_id(),
            conversation=conv,
            seq=seq,
            sender=alice,
            client_id=unique("c"),
            body="hi",
            ts=now_ms(),
        )
        events.message_stored(message, messages.encoded_frame(message))

    await in_transaction(store, commit=False)
    assert await a.receive_nothing(QUIET)
    assert await b.receive_nothing(QUIET)
    await in_transaction(store, commit=True)
    for comm in (a, b):
        frame = await comm.receive_json_from(WAIT)
        assert frame["type"] == "message" and frame["seq"] == 1 and frame["body"] == "hi"
        assert frame["sender"]["id"] == alice.pk and frame["conversation"] == conv.pk
    await a.disconnect()
    await b.disconnect()


async def test_receipts_and_typing_reach_the_other_members_not_the_author(runtime) -> None:
    """Every socket of the other members hears; the author's own and strangers' do not."""
    (alice, a_token), (bob, b_token), (carol, c_token), (_, s_token) = [
        await person() for _ in range(4)
    ]
    a1, a2, b, c, stranger = [
        await chat(t, synced=True) for t in (a_token, a_token, b_token, c_token, s_token)
    ]
    conv = await group(alice, bob, carol)
    await joined(a1, a2, b, c)
    await events.read_receipt(conv.pk, alice, 3)
    receipt = {"type": "receipt", "conversation": conv.pk, "seq": 3}
    for comm in (b, c):
        frame = await comm.receive_json_from(WAIT)
        assert frame == {**receipt, "user": {"id": alice.pk, "username": alice.username}}
    await events.typing(conv.pk, bob)
    typing = {"type": "typing", "conversation": conv.pk}
    for comm in (a1, a2, c):
        frame = await comm.receive_json_from(WAIT)
        assert frame == {**typing, "user": {"id": bob.pk, "username": bob.username}}
    for comm in (a1, a2, b, stranger):  # beyond the frames taken above
        assert await comm.receive_nothing(QUIET)
    for comm in (a1, a2, b, c, stranger):
        await comm.disconnect()


async def test_presence_tells_co_members_once_and_not_strangers(runtime) -> None:
    """Online/offline of a user reach who shares a conversation with them, once per change."""
    (alice, a_token), (bob, b_token), (_, s_token) = [await person() for _ in range(3)]
    await group(alice, bob)
    b, stranger = await chat(b_token, synced=True), await chat(s_token, synced=True)
    a = await chat(a_token, synced=True)
    online = await b.receive_json_from(WAIT)
    assert online["type"] == "presence" and online["status"] == "online"
    assert online["user"] == {"id": alice.pk, "username": alice.username}
    assert isinstance(online["ts"], int)
    await events.presence_changed(alice.pk)  # nothing changed: nothing said
    assert await b.receive_nothing(QUIET)
    assert await stranger.receive_nothing(0.01)
    assert await a.receive_nothing(0.01)  # not to the user's own sockets
    await a.disconnect()
    offline = await b.receive_json_from(WAIT)
    assert offline["type"] == "presence" and offline["status"] == "offline"
    assert offline["user"]["id"] == alice.pk
    assert await stranger.receive_nothing(QUIET)
    assert not await database_sync_to_async(LiveConnection.objects.filter(user=alice).exists)()
    await b.disconnect()
    await stranger.disconnect()
