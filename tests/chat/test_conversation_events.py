"""PROTOCOL 10 on the one write path: edits, deletes, reactions, replies and attachments
go through the same batches as sends (chat/sends.py), with every rule per event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from accounts.models import User
from realtime.chat import conversations, messages, sends
from realtime.chat.conversations import new_conversation_id
from realtime.chat.messages import Sent
from realtime.chat.sends import SendRequest, store_sends
from realtime.models import Attachment, Conversation, Membership, Message
from realtime.protocol import Code, TetherError
from tests.support.services import postgres_service, rerun_on_postgresql  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> None:
    """Attachments' files in a folder of the test's own (never the working tree)."""
    settings.MEDIA_ROOT = str(tmp_path / "media")


def conversation(*members: User) -> str:
    conv = Conversation.objects.create(
        id=new_conversation_id(), kind="group", title="t", created_by=members[0]
    )
    Membership.objects.bulk_create([Membership(conversation=conv, user=u) for u in members])
    return conv.id


@pytest.fixture
def people() -> list[User]:
    return [User.objects.create(username=f"ev{i}") for i in range(4)]


def one(request: SendRequest) -> Sent | TetherError:
    return store_sends([request])[0]


def ok(request: SendRequest) -> Sent:
    result = one(request)
    assert isinstance(result, Sent), result
    return result


def refused(request: SendRequest, code: str, field: str | None = None) -> TetherError:
    result = one(request)
    assert isinstance(result, TetherError), result
    assert result.code == code, result.message
    if field is not None:
        assert result.extra.get("field") == field and result.message.startswith(field)
    return result


def edit(user: User, cid: str, key: str, target: str, body: str) -> SendRequest:
    return sends.edit_request(user, cid, key, target, body)


def delete(user: User, cid: str, key: str, target: str) -> SendRequest:
    return sends.delete_request(user, cid, key, target)


def react(user: User, cid: str, key: str, target: str, emoji: str, on: bool) -> SendRequest:
    return sends.react_request(user, cid, key, target, emoji, on)


def attachment(user: User, cid: str, name: str = "plan.txt") -> Attachment:
    """An uploaded attachment: its bytes through the storage API, its row unheld."""
    stored = default_storage.save(
        f"attachments/test/{name}", ContentFile(b"bytes of " + name.encode())
    )
    return Attachment.objects.create(
        id="a_" + new_conversation_id()[1:],
        conversation_id=cid,
        uploader=user,
        file=stored,
        name=name,
        size=default_storage.size(stored),
        content_type="text/plain",
    )


def row(message_id: str) -> Message:
    return Message.objects.get(pk=message_id)


def test_edit_changes_the_target_in_the_events_transaction(people: list[User]) -> None:
    a, b, *_ = people
    cid = conversation(a, b)
    m = ok(sends.request(a, cid, "m1", "hello")).message
    e = ok(edit(a, cid, "e1", m.id, "hello, fixed")).message
    assert (e.kind, e.target_id, e.seq, e.body) == ("edit", m.id, 2, "hello, fixed")
    target = row(m.id)
    assert target.body == "hello, fixed" and target.edited_at == e.ts
    assert Conversation.objects.get(pk=cid).last_seq == 2
    # Only the sender may edit; an unknown id is not_found; a non-member forbidden.
    refused(edit(b, cid, "e2", m.id, "mine now"), Code.FORBIDDEN)
    refused(edit(a, cid, "e3", "m_nope", "x"), Code.NOT_FOUND, "message_id")
    refused(edit(a, cid, "e4", e.id, "x"), Code.NOT_FOUND, "message_id")  # not a message event
    outsider = people[3]
    refused(edit(outsider, cid, "e5", m.id, "x"), Code.FORBIDDEN)
    other = conversation(a)
    refused(edit(a, other, "e6", m.id, "x"), Code.NOT_FOUND, "message_id")
    with pytest.raises(TetherError) as empty:
        edit(a, cid, "e7", m.id, "  ")
    assert empty.value.code == Code.BAD_REQUEST and empty.value.extra["field"] == "body"
    assert Conversation.objects.get(pk=cid).last_seq == 2  # refused: no seq taken


def test_delete_is_real_and_twice_is_the_first_ack(people: list[User]) -> None:
    a, b, c, _ = people
    cid = conversation(a, b, c)  # a created it
    file = attachment(b, cid)
    m = ok(sends.request(b, cid, "m1", "secret", attachment_ids=[file.id])).message
    ok(edit(b, cid, "e1", m.id, "secret, edited"))
    refused(delete(c, cid, "d0", m.id), Code.FORBIDDEN)  # neither sender, creator nor staff
    first = ok(delete(a, cid, "d1", m.id))  # the creator may
    assert first.message.kind == "delete" and first.message.body == ""
    target = row(m.id)
    assert target.deleted and target.body == ""
    assert [e.body for e in Message.objects.filter(target_id=m.id, kind="edit")] == [""]
    assert not Attachment.objects.filter(pk=file.id).exists()
    assert not default_storage.exists(file.file.name)
    # Deleting again (by the sender, another key) answers the first delete's ack.
    again = ok(delete(b, cid, "d2", m.id))
    assert again.duplicate and again.message.id == first.message.id
    assert again.ack("x")["seq"] == first.message.seq
    assert Conversation.objects.get(pk=cid).last_seq == first.message.seq
    refused(edit(b, cid, "e2", m.id, "back"), Code.BAD_REQUEST, "message_id")
    # Replays show the current state: deleted, empty, no attachments; edits emptied.
    frames = [json.loads(t) for _, t in messages.read_range(cid, 0, 10)]
    assert frames[0]["deleted"] is True and frames[0]["body"] == ""
    assert frames[0]["attachments"] == []
    assert frames[1]["kind"] == "edit" and frames[1]["body"] == ""


def test_staff_may_delete_and_the_admin_acts_without_membership(people: list[User]) -> None:
    a, b, _, d = people
    cid = conversation(a, b)
    m = ok(sends.request(b, cid, "m1", "x")).message
    d.is_staff = True
    d.save()
    refused(delete(d, cid, "d1", m.id), Code.FORBIDDEN)  # staff, but no member
    done = ok(sends.delete_request(d, cid, "d2", m.id, staff=True))
    assert done.message.sender_id == d.pk and row(m.id).deleted
    Membership.objects.create(conversation_id=cid, user=d)
    m2 = ok(sends.request(a, cid, "m2", "y")).message
    assert ok(delete(d, cid, "d3", m2.id)).message.kind == "delete"  # a staff member


def test_every_react_is_an_event_and_reactions_keep_order(people: list[User]) -> None:
    a, b, c, _ = people
    cid = conversation(a, b, c)
    m = ok(sends.request(a, cid, "m1", "hi")).message
    ok(react(b, cid, "r1", m.id, "👍", True))
    ok(react(c, cid, "r2", m.id, "👍", True))
    ok(react(a, cid, "r3", m.id, "🎉", True))
    noop = ok(react(b, cid, "r4", m.id, "👍", True))  # already on: still an event
    assert not noop.duplicate and noop.message.seq == 5
    assert row(m.id).reactions == {"👍": [b.pk, c.pk], "🎉": [a.pk]}
    ok(react(b, cid, "r5", m.id, "👍", False))
    ok(react(a, cid, "r6", m.id, "🎉", False))
    ok(react(a, cid, "r7", m.id, "🙂", False))  # nothing to remove: an event
    assert row(m.id).reactions == {"👍": [c.pk]}
    assert Conversation.objects.get(pk=cid).last_seq == 8
    reaction = row(noop.message.id)
    assert (reaction.kind, reaction.emoji, reaction.reaction_on) == ("reaction", "👍", True)
    for emoji, on, field in [("", True, "emoji"), ("x" * 17, True, "emoji"), ("👍", 1, "on")]:
        with pytest.raises(TetherError) as bad:
            react(a, cid, "r8", m.id, emoji, on)  # type: ignore[arg-type]
        assert bad.value.extra["field"] == field


def test_one_key_space_for_every_kind(people: list[User]) -> None:
    a, b, *_ = people
    cid = conversation(a, b)
    m = ok(sends.request(a, cid, "k1", "hi")).message
    r = ok(react(a, cid, "k2", m.id, "👍", True))
    for again in [
        react(a, cid, "k2", m.id, "👎", False),
        edit(a, cid, "k2", m.id, "other"),
        sends.request(a, cid, "k2", "a send"),
    ]:
        dup = ok(again)
        assert dup.duplicate and dup.message.id == r.message.id
    assert ok(edit(a, cid, "k1", m.id, "x")).duplicate  # the send's key
    assert row(m.id).reactions == {"👍": [a.pk]} and row(m.id).body == "hi"
    assert Message.objects.filter(conversation_id=cid).count() == 2


def test_reply_to_and_attachments_rules(people: list[User]) -> None:
    a, b, c, _ = people
    cid, other = conversation(a, b), conversation(a, c)
    m = ok(sends.request(a, cid, "m1", "first")).message
    elsewhere = ok(sends.request(a, other, "o1", "there")).message
    reply = ok(sends.request(b, cid, "m2", "re", reply_to=m.id)).message
    assert row(reply.id).reply_to_id == m.id
    refused(sends.request(b, cid, "m3", "re", reply_to=elsewhere.id), Code.BAD_REQUEST, "reply_to")
    refused(sends.request(b, cid, "m4", "re", reply_to="m_none"), Code.BAD_REQUEST, "reply_to")
    r = ok(react(a, cid, "r1", m.id, "👍", True)).message
    refused(sends.request(b, cid, "m5", "re", reply_to=r.id), Code.BAD_REQUEST, "reply_to")
    mine, theirs, there = attachment(b, cid, "a"), attachment(a, cid, "b"), attachment(b, other)
    held = ok(sends.request(b, cid, "m6", "", attachment_ids=[mine.id])).message
    assert held.body == "" and Attachment.objects.get(pk=mine.id).message_id == held.id
    for key, ids in [("m7", [mine.id]), ("m8", [theirs.id]), ("m9", [there.id]), ("mA", ["a_x"])]:
        refused(
            sends.request(b, cid, key, "x", attachment_ids=ids), Code.BAD_REQUEST, "attachments"
        )
    for bad in [["a"] * 11, "a_1", [1], ["a_1", "a_1"]]:
        with pytest.raises(TetherError) as e:
            sends.request(b, cid, "mB", "x", attachment_ids=bad)
        assert e.value.extra["field"] == "attachments"
    with pytest.raises(TetherError) as e:
        sends.request(b, cid, "mC", "", attachment_ids=[])
    assert e.value.extra["field"] == "body"
    frame = json.loads(messages.read_range(cid, held.seq - 1, held.seq)[0][1])
    assert frame["attachments"] == [
        {
            "id": mine.id,
            "name": "a",
            "size": mine.size,
            "content_type": "text/plain",
            "url": f"/api/attachments/{mine.id}/",
        }
    ]


def test_two_sends_of_one_batch_cannot_claim_one_attachment(people: list[User]) -> None:
    a, b, *_ = people
    cid = conversation(a, b)
    file = attachment(a, cid)
    results = store_sends(
        [
            sends.request(a, cid, "x1", "one", attachment_ids=[file.id]),
            sends.request(a, cid, "x2", "two", attachment_ids=[file.id]),
        ]
    )
    assert isinstance(results[0], Sent) and isinstance(results[1], TetherError)
    assert results[1].extra["field"] == "attachments"
    assert Attachment.objects.get(pk=file.id).message_id == results[0].message.id
    assert Conversation.objects.get(pk=cid).last_seq == 1  # the refused one's seq given back


def test_a_batch_mixing_every_kind(people: list[User]) -> None:
    """One batch: sends, an edit, reactions, deletes (one twice), refusals and a
    duplicate; seqs gap-free, state as if one at a time."""
    a, b, c, d = people
    cid, two = conversation(a, b, c), conversation(c, d)
    m1 = ok(sends.request(a, cid, "m1", "one")).message
    m2 = ok(sends.request(b, cid, "m2", "two")).message
    file = attachment(c, cid)
    batch: list[Any] = [
        sends.request(c, cid, "n1", "new", reply_to=m1.id, attachment_ids=[file.id]),
        edit(a, cid, "n2", m1.id, "one, edited"),
        react(b, cid, "n3", m1.id, "👍", True),
        sends.request(d, two, "n4", "elsewhere"),
        edit(b, cid, "n5", m1.id, "not mine"),
        delete(b, cid, "n6", m2.id),
        delete(a, cid, "n7", m2.id),  # the creator, again: the first delete's ack
        edit(b, cid, "n8", m2.id, "too late"),
        react(c, cid, "n9", m1.id, "👍", True),
        react(b, cid, "n3", m1.id, "👍", False),  # a repeated key in the batch
        react(c, cid, "nA", m2.id, "🎉", True),
    ]
    results = store_sends(batch)
    stored = [r for r in results if isinstance(r, Sent) and not r.duplicate]
    assert [r.message.seq for r in stored] == [3, 4, 5, 1, 6, 7, 8]
    assert isinstance(results[4], TetherError) and results[4].code == Code.FORBIDDEN
    assert isinstance(results[6], Sent) and results[6].duplicate
    assert results[6].message.id == results[5].message.id  # type: ignore[union-attr]
    assert isinstance(results[7], TetherError) and results[7].extra["field"] == "message_id"
    assert isinstance(results[9], Sent) and results[9].duplicate
    assert results[9].message.id == results[2].message.id  # type: ignore[union-attr]
    assert Conversation.objects.get(pk=cid).last_seq == 8
    assert Conversation.objects.get(pk=two).last_seq == 1
    first = row(m1.id)
    assert first.body == "one, edited" and first.edited_at is not None
    assert first.reactions == {"👍": [b.pk, c.pk]}
    assert row(m2.id).deleted and row(m2.id).reactions == {"🎉": [c.pk]}
    new = results[0].message  # type: ignore[union-attr]
    assert row(new.id).reply_to_id == m1.id
    assert Attachment.objects.get(pk=file.id).message_id == new.id
    assert list(
        Message.objects.filter(conversation_id=cid).order_by("seq").values_list("seq", flat=True)
    ) == list(range(1, 9))


def test_unread_last_seq_and_read_positions(people: list[User]) -> None:
    a, b, c, _ = people
    cid = conversation(a, b, c)
    m1 = ok(sends.request(b, cid, "m1", "one")).message
    ok(sends.request(b, cid, "m2", "two"))
    ok(sends.request(a, cid, "m3", "mine"))  # a read up to 3 by sending
    ok(sends.request(b, cid, "m4", "four"))
    ok(react(b, cid, "r1", m1.id, "👍", True))
    ok(edit(b, cid, "e1", m1.id, "one!"))
    m7 = ok(sends.request(c, cid, "m7", "seven")).message
    ok(delete(c, cid, "d1", m7.id))
    conv = Conversation.objects.get(pk=cid)
    shown = conversations.represent(conv, a.pk)
    assert shown["last_seq"] == 8 and shown["read_seq"] == 3
    assert shown["unread"] == 1  # m4 only: events are not messages, m7 was deleted
    assert shown["read_positions"] == {str(a.pk): 3, str(b.pk): 6, str(c.pk): 8}
    listed, _ = conversations.list_conversations(b.pk, 10, 0)
    assert listed[0]["unread"] == 0 and listed[0]["read_positions"] == shown["read_positions"]


def test_webhook_rows_for_every_event_and_notify_only_for_messages(
    people: list[User], settings
) -> None:
    from realtime.models import OutboxEvent

    settings.WEBHOOK_URL = "http://127.0.0.1:9/hook"
    settings.WEBHOOK_SECRET = "s" * 32
    a, b, *_ = people
    cid = conversation(a, b)
    m = ok(sends.request(a, cid, "m1", "hi")).message
    ok(edit(a, cid, "e1", m.id, "hi!"))
    ok(react(b, cid, "r1", m.id, "👍", True))
    ok(delete(a, cid, "d1", m.id))
    rows = list(OutboxEvent.objects.order_by("id"))
    events = [json.loads(r.data) for r in rows if r.type == "conversation.event"]
    assert [e["kind"] for e in events] == ["message", "edit", "reaction", "delete"]
    assert events[0]["attachments"] == [] and events[0]["reactions"] == {}
    assert events[2]["emoji"] == "👍" and events[2]["on"] is True
    assert events[3]["target"] == m.id and "type" not in events[3]
    notify = [json.loads(r.data) for r in rows if r.type == "notify.offline"]
    assert [n["seq"] for n in notify] == [1]  # only the message, to b (offline)


@pytest.mark.django_db(transaction=False)
def test_the_same_rules_hold_on_postgresql(postgres_service) -> None:  # noqa: F811
    """The raw SQL takes another path on PostgreSQL (arrays, locks, RETURNING)."""
    rerun_on_postgresql(__file__, postgres_service, "not on_postgresql")
