"""PROTOCOL 10 over `/ws/chat/` (WebsocketCommunicator) and REST: the frames, their
errors, live delivery to every socket, replays with the current state."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.admin.utils import quote as admin_quote
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from accounts.models import User
from realtime.models import Attachment, Message
from tests.support.focused import WAIT, chat, group, person
from tests.support.names import unique
from tests.support.services import postgres_service, rerun_on_postgresql  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> None:
    """Attachments' files in a folder of the test's own (never the working tree)."""
    settings.MEDIA_ROOT = str(tmp_path / "media")


QUIET = 0.3


async def answer(comm: WebsocketCommunicator, request_id: str) -> tuple[dict, list[dict]]:
    """The direct answer to `request_id` (ack, result, error) and the frames before it."""
    before: list[dict[str, Any]] = []
    while True:
        frame = await comm.receive_json_from(WAIT)
        if frame.get("id") == request_id and frame["type"] in ("ack", "error", "result", "synced"):
            return frame, before
        before.append(frame)


async def next_message(comm: WebsocketCommunicator, pending: list[dict], seq: int = 0) -> dict:
    """The next `message` frame (with `seq` at least `seq`), looking first at frames
    already received."""
    while pending:
        frame = pending.pop(0)
        if frame["type"] == "message" and frame["seq"] >= seq:
            return frame
    while True:
        frame = await comm.receive_json_from(WAIT)
        if frame["type"] == "message" and frame["seq"] >= seq:
            return frame


async def do(comm: WebsocketCommunicator, frame: dict) -> tuple[dict, list[dict]]:
    await comm.send_json_to(frame)
    return await answer(comm, frame["id"])


@database_sync_to_async
def uploaded(user: User, cid: str, name: str) -> Attachment:
    stored = default_storage.save(f"attachments/test/{name}", ContentFile(b"%PDF-1.4 " * 10))
    return Attachment.objects.create(
        id=unique("a_"),
        conversation_id=cid,
        uploader=user,
        file=stored,
        name=name,
        size=default_storage.size(stored),
        content_type="application/pdf",
    )


def rest(user: User) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


async def test_events_live_errors_and_replays(runtime) -> None:
    alice, alice_token = await person()
    bob, bob_token = await person()
    carol, carol_token = await person()
    cid = (await group(alice, bob, carol)).pk
    a, b = await chat(alice_token, synced=True), await chat(bob_token, synced=True)
    c = await chat(carol_token, synced=True)
    file = await uploaded(bob, cid, "plan.pdf")

    ack, seen = await do(a, {"type": "send", "id": "s1", "conversation": cid, "body": "hello"})
    m1 = ack["message_id"]
    live = await next_message(a, seen)
    assert live == {
        "type": "message",
        "conversation": cid,
        "seq": 1,
        "kind": "message",
        "message_id": m1,
        "client_id": "s1",
        "sender": {"id": alice.pk, "username": alice.username},
        "body": "hello",
        "ts": ack["ts"],
        "reply_to": None,
        "attachments": [],
        "edited_at": None,
        "deleted": False,
        "reactions": {},
    }
    # A reply with an attachment and an empty body, from bob.
    send = {"type": "send", "id": "s2", "conversation": cid, "body": "", "reply_to": m1}
    ack2, seen = await do(b, {**send, "attachments": [file.id]})
    reply = await next_message(b, seen, 2)
    assert reply["reply_to"] == m1 and reply["body"] == ""
    assert reply["attachments"] == [
        {
            "id": file.id,
            "name": "plan.pdf",
            "size": file.size,
            "content_type": "application/pdf",
            "url": f"/api/attachments/{file.id}/",
        }
    ]
    # Errors, each naming its field, and nothing stored for any of them.
    for frame, code, field in [
        (
            {"type": "send", "id": "x1", "body": "x", "reply_to": "m_nope"},
            "bad_request",
            "reply_to",
        ),
        (
            {"type": "send", "id": "x2", "body": "x", "attachments": [file.id]},
            "bad_request",
            "attachments",
        ),
        ({"type": "send", "id": "x3", "body": ""}, "bad_request", "body"),
        ({"type": "edit", "id": "x4", "message_id": m1, "body": "bob's"}, "forbidden", None),
        (
            {"type": "edit", "id": "x5", "message_id": "m_nope", "body": "b"},
            "not_found",
            "message_id",
        ),
        (
            {"type": "react", "id": "x6", "message_id": m1, "emoji": "", "on": True},
            "bad_request",
            "emoji",
        ),
        ({"type": "react", "id": "x7", "message_id": m1, "emoji": "👍"}, "bad_request", "on"),
        ({"type": "delete", "id": "x8", "message_id": m1}, "forbidden", None),
        ({"type": "delete", "id": "x9"}, "bad_request", "message_id"),
        ({"type": "edit", "id": "xA", "message_id": m1}, "bad_request", "body"),
    ]:
        error, _ = await do(b, {**frame, "conversation": cid})
        assert (error["type"], error["code"], error.get("field")) == ("error", code, field), error
    _, outsider_token = await person()
    o = await chat(outsider_token)
    error, _ = await do(
        o, {"type": "edit", "id": "o1", "conversation": cid, "message_id": m1, "body": "x"}
    )
    assert error["code"] == "forbidden"
    await o.disconnect()

    edit = {"type": "edit", "id": "e1", "conversation": cid, "message_id": m1, "body": "hello!"}
    ack3, seen = await do(a, edit)
    frame = await next_message(a, seen, 3)
    assert {k: frame[k] for k in ("seq", "kind", "target", "body")} == {
        "seq": 3,
        "kind": "edit",
        "target": m1,
        "body": "hello!",
    }
    assert await do(a, {**edit, "body": "other"}) == ({**ack3, "duplicate": True}, [])
    react = {"type": "react", "id": "r1", "conversation": cid, "message_id": m1, "emoji": "👍"}
    await do(b, {**react, "on": True})
    ack5, before = await do(c, {**react, "id": "r2", "on": False})  # changes nothing: an event
    assert ack5["seq"] == 5 and ack5["duplicate"] is False
    # carol's socket got every event once, in order, with the fields of its kind.
    got = [f for f in before if f["type"] == "message"]
    while len(got) < 5:
        got.append(await next_message(c, []))
    assert [(f["seq"], f["kind"]) for f in got] == [
        (1, "message"),
        (2, "message"),
        (3, "edit"),
        (4, "reaction"),
        (5, "reaction"),
    ]
    assert got[4]["on"] is False and got[4]["emoji"] == "👍" and got[4]["target"] == m1
    delete = {"type": "delete", "id": "d1", "conversation": cid, "message_id": ack2["message_id"]}
    first, _ = await do(b, delete)
    again, _ = await do(b, {**delete, "id": "d2"})
    assert again == {**first, "id": "d2", "duplicate": True}
    assert not await database_sync_to_async(Attachment.objects.filter(pk=file.id).exists)()
    assert not default_storage.exists(file.file.name)

    # A new socket of alice's replays the current state.
    fresh = await chat(alice_token)
    synced, replayed = await do(fresh, {"type": "sync", "id": "y", "positions": {cid: 0}})
    messages = [f for f in replayed if f["type"] == "message"]
    assert [f["seq"] for f in messages] == [1, 2, 3, 4, 5, 6]
    assert synced["conversations"][cid] == {"seq": 6, "replayed": 6, "complete": True}
    assert messages[0]["body"] == "hello!" and messages[0]["edited_at"] == ack3["ts"]
    assert messages[0]["reactions"] == {"👍": [bob.pk]}
    assert messages[1]["deleted"] is True and messages[1]["body"] == ""
    assert messages[1]["attachments"] == [] and messages[1]["reply_to"] == m1
    assert messages[5]["kind"] == "delete" and messages[5]["target"] == ack2["message_id"]
    result, _ = await do(fresh, {"type": "history", "id": "h", "conversation": cid, "after": 0})
    assert result["data"]["messages"] == [
        {k: v for k, v in f.items() if k != "type"} for f in messages
    ]
    listed, _ = await do(fresh, {"type": "conversations", "id": "l"})
    mine = listed["data"]["conversations"][0]
    assert mine["last_seq"] == 6 and mine["read_seq"] == 3 and mine["unread"] == 0
    assert mine["read_positions"] == {str(alice.pk): 3, str(bob.pk): 6, str(carol.pk): 5}
    for comm in (a, b, c, fresh):
        await comm.disconnect()


async def test_rest_rows_for_events(runtime) -> None:
    alice, _ = await person()
    bob, bob_token = await person()
    cid = (await group(alice, bob)).pk
    b = await chat(bob_token, synced=True)

    def calls() -> dict[str, Any]:
        api, other = rest(alice), rest(bob)
        base = f"/api/conversations/{cid}/messages/"
        out: dict[str, Any] = {}
        sent = api.post(base, {"id": "p1", "body": "hi"}, format="json")
        out["sent"] = sent
        mid = sent.json()["message_id"]
        out["reply"] = other.post(base, {"id": "p2", "body": "re", "reply_to": mid}, format="json")
        out["bad_reply"] = other.post(
            base, {"id": "p3", "body": "re", "reply_to": "m_x"}, format="json"
        )
        out["edit"] = api.patch(f"{base}{mid}/", {"id": "p4", "body": "hi!"}, format="json")
        out["edit_again"] = api.patch(f"{base}{mid}/", {"id": "p4", "body": "hi?"}, format="json")
        out["edit_forbidden"] = other.patch(
            f"{base}{mid}/", {"id": "p5", "body": "x"}, format="json"
        )
        out["edit_unknown"] = api.patch(f"{base}m_zz/", {"id": "p6", "body": "x"}, format="json")
        out["react"] = other.post(
            f"{base}{mid}/reactions/", {"id": "p7", "emoji": "🎉", "on": True}, format="json"
        )
        out["react_again"] = other.post(
            f"{base}{mid}/reactions/", {"id": "p7", "emoji": "🎉", "on": True}, format="json"
        )
        out["bad_react"] = other.post(
            f"{base}{mid}/reactions/", {"id": "p8", "emoji": "🎉", "on": "yes"}, format="json"
        )
        out["delete_forbidden"] = other.delete(f"{base}{mid}/?id=p9")
        out["delete"] = api.delete(f"{base}{mid}/?id=pA")
        out["delete_again"] = api.delete(f"{base}{mid}/?id=pB")
        out["delete_no_key"] = api.delete(f"{base}{mid}/")
        out["list"] = api.get(base)
        out["conversation"] = other.get(f"/api/conversations/{cid}/")
        return out

    r = await database_sync_to_async(calls)()
    assert r["sent"].status_code == 201 and r["sent"].json()["kind"] == "message"
    mid = r["sent"].json()["message_id"]
    assert r["reply"].status_code == 201 and r["reply"].json()["reply_to"] == mid
    assert (r["bad_reply"].status_code, r["bad_reply"].json()["field"]) == (400, "reply_to")
    edit = r["edit"].json()
    assert r["edit"].status_code == 200 and edit["kind"] == "edit" and edit["target"] == mid
    assert edit["duplicate"] is False
    assert r["edit_again"].status_code == 200 and r["edit_again"].json()["duplicate"] is True
    assert r["edit_again"].json()["message_id"] == edit["message_id"]
    assert r["edit_forbidden"].status_code == 403
    assert r["edit_unknown"].status_code == 404
    assert r["react"].status_code == 201 and r["react"].json()["emoji"] == "🎉"
    assert r["react_again"].status_code == 200 and r["react_again"].json()["duplicate"]
    assert (r["bad_react"].status_code, r["bad_react"].json()["field"]) == (400, "on")
    assert r["delete_forbidden"].status_code == 403
    assert r["delete"].status_code == 200 and r["delete"].json()["kind"] == "delete"
    again = r["delete_again"].json()
    assert again["message_id"] == r["delete"].json()["message_id"] and again["duplicate"]
    assert (r["delete_no_key"].status_code, r["delete_no_key"].json()["field"]) == (400, "id")
    listed = r["list"].json()["messages"]
    assert [m["kind"] for m in listed] == ["message", "message", "edit", "reaction", "delete"]
    assert listed[0]["deleted"] and listed[0]["body"] == "" and listed[2]["body"] == ""
    assert listed[0]["reactions"] == {"🎉": [bob.pk]}
    conv = r["conversation"].json()
    assert conv["unread"] == 0 and conv["read_positions"][str(alice.pk)] == 5
    # bob's socket heard every REST event live, in order.
    seqs = []
    while len(seqs) < 5:
        frame = await b.receive_json_from(WAIT)
        if frame["type"] == "message":
            seqs.append((frame["seq"], frame["kind"]))
    assert seqs == [(1, "message"), (2, "message"), (3, "edit"), (4, "reaction"), (5, "delete")]
    count = database_sync_to_async(Message.objects.filter(conversation_id=cid).count)
    assert await count() == 5
    await b.disconnect()


async def test_the_admin_deletes_through_the_same_path(runtime) -> None:
    """*Delete messages* in the Django admin: an event every member's socket hears, the
    message's body, edits and attachments gone; its page shows events and attachments."""
    from django.test import Client

    alice, alice_token = await person()
    bob, _ = await person()
    cid = (await group(alice, bob)).pk
    a = await chat(alice_token, synced=True)
    file = await uploaded(alice, cid, "x.pdf")
    ack, _ = await do(
        a,
        {"type": "send", "id": "s1", "conversation": cid, "body": "oops", "attachments": [file.id]},
    )
    mid = ack["message_id"]
    await do(
        a,
        {
            "type": "react",
            "id": "r1",
            "conversation": cid,
            "message_id": mid,
            "emoji": "👀",
            "on": True,
        },
    )

    def as_operator() -> tuple[int, str, int]:
        operator = User.objects.create_superuser(unique("op"), password="pw-Not-common-123")
        web = Client()
        web.force_login(operator)
        page = web.get(f"/admin/realtime/message/{admin_quote(mid)}/change/")
        html = page.content.decode()
        done = web.post(
            "/admin/realtime/message/",
            {"action": "delete_messages", "_selected_action": [mid]},
        )
        return page.status_code, html, done.status_code

    status, html, posted = await database_sync_to_async(as_operator)()
    assert status == 200 and "x.pdf" in html and "👀" in html
    assert posted == 302
    frame = await next_message(a, [], 3)
    assert (frame["kind"], frame["target"], frame["body"]) == ("delete", mid, "")
    row = await database_sync_to_async(Message.objects.get)(pk=mid)
    assert row.deleted and row.body == ""
    assert not await database_sync_to_async(Attachment.objects.filter(pk=file.id).exists)()
    await a.disconnect()


@pytest.mark.django_db(transaction=False)
def test_the_same_frames_on_postgresql(postgres_service) -> None:  # noqa: F811
    """The write path's raw SQL takes another path on PostgreSQL: run this file there."""
    rerun_on_postgresql(__file__, postgres_service, "not on_postgresql")
