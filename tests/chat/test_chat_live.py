"""PROTOCOL 6 and the chat rows of PROTOCOL 9 over real sockets, in both modes."""

from __future__ import annotations

import asyncio

from tests.support.chat import (
    collect,
    expect_skipping,
    group,
    person,
    quiet,
    send,
    two_in_a_group,
)
from tests.support.live import DaphneNode
from tests.support.names import unique


async def test_rest_conversations_and_members(node: DaphneNode) -> None:
    alice, bob, carol = person(node), person(node), person(node)
    status, direct = alice.api(
        node, "POST", "/api/conversations/", {"kind": "direct", "members": [bob.id]}
    )
    assert status == 201 and direct["kind"] == "direct"
    assert {m["id"] for m in direct["members"]} == {alice.id, bob.id}
    status, again = bob.api(
        node, "POST", "/api/conversations/", {"kind": "direct", "members": [alice.id]}
    )
    assert status == 200 and again["id"] == direct["id"]  # one per pair
    cid = group(node, alice, bob, title="<b>plans</b>")
    status, detail = bob.api(node, "GET", f"/api/conversations/{cid}/")
    assert status == 200 and detail["title"] == "<b>plans</b>"
    assert detail["created_by"] == {"id": alice.id, "username": alice.username}
    assert detail["last_seq"] == 0 and detail["read_seq"] == 0 and detail["unread"] == 0
    # non-member and non-existent get the same answer
    s1, b1 = carol.api(node, "GET", f"/api/conversations/{cid}/")
    s2, b2 = carol.api(node, "GET", "/api/conversations/knope/")
    assert s1 == s2 == 403 and b1 == b2 and b1["error"] == "forbidden"
    # carol's socket gets `joined` when added, `left` when removed, and stops receiving
    carol_ws = await carol.socket(node)
    status, body = bob.api(node, "POST", f"/api/conversations/{cid}/members/", {"user": carol.id})
    assert status == 201, body
    joined = await expect_skipping(carol_ws, "joined")
    assert joined["conversation"]["id"] == cid
    alice_ws = await alice.socket(node)
    await send(alice_ws, cid, "hello carol")
    assert (await expect_skipping(carol_ws, "message"))["body"] == "hello carol"
    status, _ = bob.api(node, "DELETE", f"/api/conversations/{cid}/members/{carol.id}/")
    assert status == 403  # only the member themself or the creator
    status, _ = alice.api(node, "DELETE", f"/api/conversations/{cid}/members/{carol.id}/")
    assert status == 204
    assert (await expect_skipping(carol_ws, "left"))["conversation"] == cid
    await send(alice_ws, cid, "carol is gone")
    assert await quiet(carol_ws, "message") == []
    status, listing = alice.api(node, "GET", "/api/conversations/?limit=1")
    assert status == 200 and len(listing["conversations"]) == 1 and listing["has_more"] is True
    for ws in (carol_ws, alice_ws):
        await ws.close()


async def test_send_ack_delivery_and_idempotency(node: DaphneNode) -> None:
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    a1, a2, b1 = await alice.socket(node), await alice.socket(node), await bob.socket(node)
    body = 'héllo 👋 <img src=x onerror=alert(1)> & "quotes"\nline'
    ack = await send(a1, cid, body, cid="req-1")
    assert ack == {
        "type": "ack",
        "id": "req-1",
        "conversation": cid,
        "seq": 1,
        "message_id": ack["message_id"],
        "ts": ack["ts"],
        "duplicate": False,
    }
    for ws in (a1, a2, b1):  # every connection of every member, the sender's own included
        message = await expect_skipping(ws, "message")
        assert message["body"] == body and message["seq"] == 1 and message["client_id"] == "req-1"
        assert message["sender"] == {"id": alice.id, "username": alice.username}
        assert message["message_id"] == ack["message_id"] and message["ts"] == ack["ts"]
    again = await send(a2, cid, "changed", cid="req-1")  # another connection, same id
    assert again["duplicate"] is True and again["seq"] == 1
    assert again["message_id"] == ack["message_id"]
    status, rest = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": "req-1", "body": "x"}
    )
    assert status == 200 and rest["duplicate"] is True and rest["seq"] == 1
    status, rest = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": "req-2", "body": "via REST"}
    )
    assert status == 201 and rest["seq"] == 2 and rest["body"] == "via REST"
    for ws in (a1, a2, b1):  # REST sends are delivered live too, and nothing twice
        messages = await collect(ws, "message", 1)
        assert [m["seq"] for m in messages] == [2]
        assert await quiet(ws, "message", 0.3) == []
    for ws in (a1, a2, b1):
        await ws.close()


async def test_send_errors(stack, make_node) -> None:
    node = make_node(stack, MAX_BODY_CHARS="10")
    alice, bob = person(node), person(node)
    cid = group(node, alice)
    ws = await alice.socket(node)
    await ws.send({"type": "send", "id": "e1", "conversation": cid, "body": "x" * 11})
    err = await expect_skipping(ws, "error")
    assert err["code"] == "too_large" and err["id"] == "e1"
    await ws.send({"type": "send", "id": "e2", "conversation": cid, "body": "é" * 10})
    assert (await expect_skipping(ws, "ack"))["seq"] == 1  # characters, not bytes
    await ws.send({"type": "send", "conversation": cid, "body": "no id"})
    err = await expect_skipping(ws, "error")
    assert err["code"] == "bad_request" and err["message"].startswith("id")
    await ws.send({"type": "send", "id": "e3", "conversation": cid})
    err = await expect_skipping(ws, "error")
    assert err["code"] == "bad_request" and err["message"].startswith("body")
    bob_ws = await bob.socket(node)
    await bob_ws.send({"type": "send", "id": "f1", "conversation": cid, "body": "hi"})
    not_member = await expect_skipping(bob_ws, "error")
    await bob_ws.send({"type": "send", "id": "f1", "conversation": "k-nope", "body": "hi"})
    missing = await expect_skipping(bob_ws, "error")
    assert not_member["code"] == missing["code"] == "forbidden"
    assert not_member["message"] == missing["message"]
    status, body = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": "r", "body": "y" * 11}
    )
    assert status == 400 and body["error"] == "too_large"
    await ws.close()
    await bob_ws.close()


async def test_many_senders_gap_free_in_order_once(node: DaphneNode) -> None:
    people = [person(node) for _ in range(3)]
    cid = group(node, people[0], *people[1:])
    sockets = [await p.socket(node) for p in people]
    per_sender = 15

    async def burst(i: int) -> None:
        for n in range(per_sender):
            await sockets[i].send(
                {"type": "send", "id": f"s{i}-{n}", "conversation": cid, "body": f"{i}:{n}"}
            )

    await asyncio.gather(*(burst(i) for i in range(len(people))))
    total = per_sender * len(people)
    for ws in sockets:
        got = await collect(ws, "message", total, timeout=20)
        assert [m["seq"] for m in got] == list(range(1, total + 1))
        assert await quiet(ws, "message", 0.3) == []
    for ws in sockets:
        await ws.close()


async def test_sync_replays_exactly_what_was_missed(stack, make_node) -> None:
    node = make_node(stack, REPLAY_LIMIT="5")
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    other = group(node, bob)  # alice is not a member
    later = group(node, alice, bob, title="unlisted")
    b = await bob.socket(node)
    for n in range(3):
        await send(b, cid, f"m{n}")
    a = await alice.socket(node)
    await a.send({"type": "sync", "id": "s1", "positions": {cid: 1, other: 0}})
    replayed = await collect(a, "message", 2)
    assert [m["seq"] for m in replayed] == [2, 3] and replayed[0]["body"] == "m1"
    joined = await expect_skipping(a, "joined", keep=True)
    assert joined["conversation"]["id"] == later
    synced = await expect_skipping(a, "synced", keep=True)
    assert synced["id"] == "s1"
    assert synced["conversations"] == {cid: {"seq": 3, "replayed": 2, "complete": True}}
    for n in range(3, 12):
        await send(b, cid, f"m{n}")
    assert [m["seq"] for m in await collect(a, "message", 9)] == list(range(4, 13))
    # Again on a socket that has been receiving (a client that thinks it missed
    # some): each message once per connection, so nothing is sent twice.
    await a.send({"type": "sync", "id": "s2", "positions": {cid: 2}})
    synced = await expect_skipping(a, "synced", keep=True)
    assert synced["conversations"][cid] == {"seq": 12, "replayed": 0, "complete": True}
    # A new connection resuming from 2 gets the replay limit's worth, then pages.
    a2 = await alice.socket(node)
    await a2.send({"type": "sync", "id": "s3", "positions": {cid: 2}})
    page = await collect(a2, "message", 5)
    assert [m["seq"] for m in page] == [3, 4, 5, 6, 7]
    synced = await expect_skipping(a2, "synced", keep=True)
    assert synced["conversations"][cid] == {"seq": 12, "replayed": 5, "complete": False}
    await send(b, cid, "live after an incomplete sync")
    assert (await expect_skipping(a2, "message", keep=True))["seq"] == 13
    assert [m["seq"] for m in await collect(a, "message", 1)] == [13]  # not 3..7 again
    for ws in (a, a2, b):
        await ws.close()


async def test_live_messages_during_a_sync_are_not_lost_doubled_or_reordered(
    node: DaphneNode,
) -> None:
    alice, cid, b = await two_in_a_group(node, 20)
    a = await alice.socket(node)

    async def keep_sending() -> None:
        for n in range(20):
            await b.send({"type": "send", "id": unique(), "conversation": cid, "body": f"{n}"})

    sender = asyncio.create_task(keep_sending())
    await a.send({"type": "sync", "id": "s", "positions": {cid: 0}})
    await sender
    got = await collect(a, "message", 40, timeout=20)
    assert [m["seq"] for m in got] == list(range(1, 41))
    assert await quiet(a, "message", 0.3) == []
    await a.close()
    await b.close()


async def test_the_resume_window_holds_through_the_nodes_head_check(stack, make_node) -> None:
    """Messages stored while a new socket waits for its `sync` must not go out
    before the replay (then again inside it), even when the node's periodic head
    check (every second here) finds the socket behind."""
    node = make_node(stack, HEARTBEAT_INTERVAL="1", PING_TIMEOUT="3")
    alice, cid, b = await two_in_a_group(node, 5)
    a = await alice.socket(node)
    for n in range(5):  # stored after alice's welcome: held for her sync
        await send(b, cid, f"during {n}")
    # Past one head check, within the 1.5 s window (a deliberate placement in time).
    await asyncio.sleep(1.2)
    await a.send({"type": "sync", "id": "s", "positions": {cid: 0}})
    got = await collect(a, "message", 10)
    assert [m["seq"] for m in got] == list(range(1, 11))
    synced = await expect_skipping(a, "synced", keep=True)
    assert synced["conversations"][cid] == {"seq": 10, "replayed": 10, "complete": True}
    assert await quiet(a, "message", 0.5) == []
    for ws in (a, b):
        await ws.close()


async def test_a_sync_after_live_messages_sends_what_is_missing_once(node: DaphneNode) -> None:
    """A client whose `sync` comes after live messages started (its window was
    over): it gets what it misses below them, and nothing twice."""
    alice, cid, b = await two_in_a_group(node, 4)
    a = await alice.socket(node)
    await a.send({"type": "conversations", "id": "q"})  # not a sync: the window ends
    await expect_skipping(a, "result", keep=True)
    for n in range(3):
        await send(b, cid, f"live {n}")
    live = await collect(a, "message", 3)
    await a.send({"type": "sync", "id": "s", "positions": {cid: 1}})
    synced = await expect_skipping(a, "synced", keep=True)
    assert synced["conversations"][cid] == {"seq": 7, "replayed": 3, "complete": True}
    late = await collect(a, "message", 3)
    assert [m["seq"] for m in live + late] == [5, 6, 7, 2, 3, 4]
    await send(b, cid, "after")
    assert [m["seq"] for m in await collect(a, "message", 1)] == [8]
    for ws in (a, b):
        await ws.close()


async def test_pipelined_sends_keep_their_order_and_later_frames_see_them(
    node: DaphneNode,
) -> None:
    """Sends in flight from one socket are stored together but in arrival order; a
    frame of another type is answered only after every earlier send."""
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    a = await alice.socket(node)
    frames: list[dict] = []
    for n in range(30):
        frames.append({"type": "send", "id": f"p-{n}", "conversation": cid, "body": f"b{n}"})
        if n == 20:
            frames.append({"type": "send", "id": "p-5", "conversation": cid, "body": "again"})
            frames.append({"type": "send", "id": "p-x", "conversation": "c_nope", "body": "x"})
    frames.append({"type": "history", "id": "h", "conversation": cid, "limit": 100})
    assert len(frames) < 40  # within the default burst: nothing rate limited
    for frame in frames:  # all written before any answer is read
        await a.send(frame)
    answers: list[dict] = []
    delivered: list[dict] = []
    while not answers or answers[-1].get("type") != "result":
        frame = await a.recv(10)
        if frame["type"] in ("ack", "error", "result"):
            answers.append(frame)
        elif frame["type"] == "message":
            delivered.append(frame)
    acks = [f for f in answers if f["type"] == "ack"]
    first = [f for f in acks if not f["duplicate"]]
    assert [(f["id"], f["seq"]) for f in first] == [(f"p-{n}", n + 1) for n in range(30)]
    (again,) = [f for f in acks if f["duplicate"]]
    assert (again["id"], again["seq"]) == ("p-5", 6)
    (error,) = [f for f in answers if f["type"] == "error"]
    assert (error["id"], error["code"]) == ("p-x", "forbidden")
    assert len(answers) == 33 and answers[-1]["id"] == "h"  # the result after every answer
    history = answers[-1]["data"]["messages"]
    assert [(m["seq"], m["body"]) for m in history] == [(n + 1, f"b{n}") for n in range(30)]
    delivered += await collect(a, "message", 30 - len(delivered))
    assert [m["seq"] for m in delivered] == list(range(1, 31))
    await a.close()


async def test_history_and_conversations_queries(node: DaphneNode) -> None:
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    b = await bob.socket(node)
    for n in range(7):
        await send(b, cid, f"m{n}")
    a = await alice.socket(node)
    await a.send({"type": "history", "id": "h1", "conversation": cid, "before": 6, "limit": 3})
    result = await expect_skipping(a, "result", keep=True)
    assert result["id"] == "h1" and result["data"]["has_more"] is True
    assert [m["seq"] for m in result["data"]["messages"]] == [3, 4, 5]
    await a.send({"type": "history", "id": "h2", "conversation": cid, "after": 5, "limit": 100})
    result = await expect_skipping(a, "result", keep=True)
    assert [m["seq"] for m in result["data"]["messages"]] == [6, 7]
    assert result["data"]["has_more"] is False
    await a.send({"type": "history", "id": "h3", "conversation": cid, "limit": 101})
    assert (await expect_skipping(a, "error", keep=True))["code"] == "bad_request"
    await a.send({"type": "read", "conversation": cid, "seq": 4})
    await a.send({"type": "conversations", "id": "c1"})
    result = await expect_skipping(a, "result", keep=True)
    (conv,) = [c for c in result["data"]["conversations"] if c["id"] == cid]
    assert (conv["last_seq"], conv["read_seq"], conv["unread"]) == (7, 4, 3)
    status, page = alice.api(node, "GET", f"/api/conversations/{cid}/messages/?after=2&limit=2")
    assert status == 200 and [m["seq"] for m in page["messages"]] == [3, 4] and page["has_more"]
    await a.close()
    await b.close()


async def test_receipts_and_typing_reach_the_other_members_only(node: DaphneNode) -> None:
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    a, b = await alice.socket(node), await bob.socket(node)
    await send(b, cid, "one")
    await send(b, cid, "two")
    await a.send({"type": "read", "conversation": cid, "seq": 2})
    receipt = await expect_skipping(b, "receipt", keep=True)
    assert receipt == {
        "type": "receipt",
        "conversation": cid,
        "user": {"id": alice.id, "username": alice.username},
        "seq": 2,
    }
    await a.send({"type": "read", "conversation": cid, "seq": 1})  # never backwards
    assert await quiet(b, "receipt", 0.4) == []
    for _ in range(5):
        await a.send({"type": "typing", "conversation": cid})
    typing = await quiet(b, "typing", 0.6)
    assert len(typing) == 1 and typing[0]["user"]["id"] == alice.id
    assert await quiet(a, "typing", 0.1) == [] and await quiet(a, "receipt", 0.1) == []
    status, detail = alice.api(node, "GET", f"/api/conversations/{cid}/")
    assert status == 200 and detail["read_seq"] == 2 and detail["unread"] == 0
    await a.close()
    await b.close()


async def test_presence_online_offline_and_query(node: DaphneNode) -> None:
    alice, bob = person(node), person(node)
    group(node, alice, bob)
    b = await bob.socket(node)
    a1 = await alice.socket(node)
    online = await expect_skipping(b, "presence", keep=True)
    assert online["user"]["id"] == alice.id and online["status"] == "online"
    a2 = await alice.socket(node)  # a second socket: no second `online`
    await b.send({"type": "presence.query", "id": "q", "users": [alice.id, bob.id, 999999]})
    result = await expect_skipping(b, "result", keep=True)
    assert result["data"] == {str(alice.id): "online", str(bob.id): "online", "999999": "offline"}
    await a1.close()
    assert await quiet(b, "presence", 0.4) == []
    await a2.close()
    offline = await expect_skipping(b, "presence", keep=True)
    assert offline["user"]["id"] == alice.id and offline["status"] == "offline"
    await b.close()
