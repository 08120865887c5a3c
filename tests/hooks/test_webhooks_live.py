"""Webhooks (PROTOCOL 13) from live daphne nodes to a receiver on 127.0.0.1: every event
type signed with its data, retries, order per conversation, a receiver that is down
and comes back, a node killed with SIGKILL during delivery."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.chat import Person, group, person, send
from tests.support.live import DaphneNode, Stack
from tests.support.names import unique
from tests.support.receiver import SECRET, Receiver
from tests.support.waiting import eventually


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def hooked(receiver: Receiver, **more: str) -> dict[str, str]:
    return {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, **more}


async def wait(receiver: Receiver, check: Callable[[Receiver], Any], timeout: float, what: str):
    """Wait for the receiver without holding the test's event loop (its sockets)."""
    return await asyncio.to_thread(receiver.wait_for, check, timeout, what)


def of(receiver: Receiver, conversation: str) -> list[dict[str, Any]]:
    """The conversation's events as a deduplicating receiver keeps them, in order."""
    return [
        e
        for e in receiver.events()
        if e["data"].get("conversation") == conversation and e["type"] != "notify.offline"
    ]


def user(p: Person) -> dict[str, Any]:
    return {"id": p.id, "username": p.username}


async def test_every_event_type_arrives_signed_with_its_data(
    stack: Stack, make_node: Callable[..., DaphneNode], receiver: Receiver
) -> None:
    node = make_node(stack, **hooked(receiver))
    alice, bob, carol = person(node), person(node), person(node)
    b = await bob.socket(node)  # bob is online; alice and carol have no chat socket
    cid = group(node, alice, bob, carol)
    ack = await send(b, cid, "hello from a socket")
    status, stored = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": unique("r"), "body": "rest"}
    )
    assert status == 201, stored
    status, _ = carol.api(node, "DELETE", f"/api/conversations/{cid}/members/{carol.id}/")
    assert status == 204
    await b.close()

    await wait(receiver, lambda r: r.events("presence.offline"), 15, "presence.offline")
    await wait(receiver, lambda r: r.events("member.left"), 15, "member.left")
    events = receiver.events()
    assert all(r.signed for r in receiver.requests), "every request verifies"
    for r in receiver.delivered():
        assert r.headers["Tether-Event-Id"] == r.event["id"]
        assert r.headers["Content-Type"] == "application/json"
        assert r.event["id"].startswith("evt_") and isinstance(r.event["ts"], int)
    by_type = defaultdict(list)
    for e in events:
        by_type[e["type"]].append(e["data"])

    assert sorted(d["user"]["id"] for d in by_type["member.joined"]) == sorted(
        [alice.id, bob.id, carol.id]
    )
    assert {"conversation": cid, "user": user(alice)} in by_type["member.joined"]
    assert by_type["member.left"] == [{"conversation": cid, "user": user(carol)}]
    first, second = by_type["conversation.event"]
    assert first == {
        "conversation": cid,
        "seq": 1,
        "kind": "message",
        "message_id": ack["message_id"],
        "client_id": first["client_id"],
        "sender": user(bob),
        "body": "hello from a socket",
        "ts": ack["ts"],
        "reply_to": None,
        "attachments": [],
        "edited_at": None,
        "deleted": False,
        "reactions": {},
    }
    assert second["seq"] == 2 and second["sender"] == user(alice) and second["body"] == "rest"
    # Alice and carol had no chat socket at the first message; at the second, bob was
    # online and alice was its sender.
    assert sorted((d["seq"], d["user"]["id"]) for d in by_type["notify.offline"]) == sorted(
        [(1, alice.id), (1, carol.id), (2, carol.id)]
    )
    assert by_type["notify.offline"][0]["message_id"] == ack["message_id"]
    online = [d for d in by_type["presence.online"] if d["user"]["id"] == bob.id]
    offline = [d for d in by_type["presence.offline"] if d["user"]["id"] == bob.id]
    assert len(online) == 1 and len(offline) == 1 and online[0]["ts"] <= offline[0]["ts"]
    # One conversation, in the order it happened.
    order = [(e["type"], e["data"].get("seq")) for e in of(receiver, cid)]
    assert order == [("member.joined", None)] * 3 + [
        ("conversation.event", 1),
        ("conversation.event", 2),
        ("member.left", None),
    ]
    # Each result is written back once the receiver has answered.
    await eventually(
        lambda: (
            stack.sql(
                "SELECT state, count(*) FROM realtime_outboxevent WHERE order_key IN (%s, %s) "
                "GROUP BY state",
                cid,
                f"user:{bob.id}",
            )
            == [("delivered", len(of(receiver, cid)) + 3 + 2)]
        ),
        5,
        "every row marked delivered",
    )


async def test_errors_and_timeouts_are_retried_in_conversation_order(
    stack: Stack, make_node: Callable[..., DaphneNode], receiver: Receiver
) -> None:
    node = make_node(stack, **hooked(receiver, WEBHOOK_TIMEOUT="1"))
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    await wait(receiver, lambda r: len(of(r, cid)) == 2, 15, "the two member.joined")
    receiver.status = 500  # every event fails for now
    b = await bob.socket(node)
    for n in range(5):
        await send(b, cid, f"m{n}")
    await wait(
        receiver,
        lambda r: sum(1 for x in r.requests if x.event["type"] == "conversation.event") >= 2,
        15,
        "a retry after a 500",
    )
    receiver.status, receiver.hang = 200, 1.5  # then no answer within WEBHOOK_TIMEOUT
    await wait(
        receiver,
        lambda r: any(x.event["type"] == "conversation.event" for x in r.delivered()),
        20,
        "an attempt that timed out",
    )
    receiver.hang = 0.0
    await wait(
        receiver,
        lambda r: [e["data"]["seq"] for e in of(r, cid)[2:]] == [1, 2, 3, 4, 5],
        30,
        "every message, in order",
    )
    # The first message was tried several times before any later one was sent.
    tries = [x for x in receiver.requests if x.event["type"] == "conversation.event"]
    assert tries[0].event["data"]["seq"] == 1 and tries[1].event["data"]["seq"] == 1
    first_ok = next(i for i, x in enumerate(tries) if x.answered == 200)
    assert all(x.event["data"]["seq"] == 1 for x in tries[:first_ok])
    row = stack.sql(
        "SELECT attempts, last_status FROM realtime_outboxevent WHERE event_id = %s",
        tries[0].event["id"],
    )
    assert row[0][0] >= 3 and row[0][1] == 200, row


async def test_a_receiver_down_for_a_while_gets_everything_in_order(
    stack: Stack, make_node: Callable[..., DaphneNode], receiver: Receiver
) -> None:
    # Each socket sends 100 at once: above the per-socket rate limit's burst.
    node = make_node(
        stack, **hooked(receiver, RATE_LIMIT_PER_SECOND="1000", RATE_LIMIT_BURST="1000")
    )
    people = [person(node) for _ in range(4)]
    conversations = [group(node, people[0], *people[1:]) for _ in range(3)]
    await wait(receiver, lambda r: len(r.events("member.joined")) == 12, 15, "joined")
    receiver.stop()
    sockets = [await p.socket(node) for p in people]
    per_conversation = 100

    async def sender(i: int) -> None:
        for n in range(per_conversation):
            await send(sockets[i % 4], conversations[i], f"{i}:{n}")

    await asyncio.gather(*(sender(i) for i in range(3)))
    pending = stack.sql("SELECT count(*) FROM realtime_outboxevent WHERE state = 'pending'")
    assert pending[0][0] >= 3 * per_conversation
    receiver.start()
    await wait(
        receiver,
        lambda r: len(r.events("conversation.event")) == 3 * per_conversation,
        90,
        "every message once the receiver is back",
    )
    for cid in conversations:
        seqs = [e["data"]["seq"] for e in of(receiver, cid) if e["type"] == "conversation.event"]
        assert seqs == list(range(1, per_conversation + 1))


async def test_a_node_killed_during_delivery_loses_no_event(
    production_stack: Stack, make_node: Callable[..., DaphneNode], receiver: Receiver
) -> None:
    settings = hooked(receiver, WEBHOOK_TIMEOUT="3")
    a = make_node(production_stack, "hooks-a", **settings)
    b = make_node(production_stack, "hooks-b", **settings)
    people = [person(a) for _ in range(3)]
    conversations = [group(a, people[0], *people[1:]) for _ in range(4)]
    await wait(receiver, lambda r: len(r.events("member.joined")) == 12, 15, "joined")
    receiver.hang = 1.0  # requests in flight for a while on both nodes
    sockets = [await p.socket(a) for p in people]
    for n in range(10):
        for i, cid in enumerate(conversations):
            await send(sockets[i % 3], cid, f"{i}:{n}")
    await wait(
        receiver,
        lambda r: len([x for x in r.requests if x.event["type"] == "conversation.event"]) >= 2,
        15,
        "deliveries under way",
    )
    a.stop(signal.SIGKILL)
    receiver.hang = 0.0
    await wait(
        receiver,
        lambda r: len(r.events("conversation.event")) == 40,
        60,
        "every message, delivered by the surviving node",
    )
    for cid in conversations:
        seqs = [e["data"]["seq"] for e in of(receiver, cid) if e["type"] == "conversation.event"]
        assert seqs == list(range(1, 11))
    assert b.proc is not None and b.proc.poll() is None


async def test_nothing_is_recorded_without_a_webhook_url(
    stack: Stack, make_node: Callable[..., DaphneNode]
) -> None:
    node = make_node(stack)
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    b = await bob.socket(node)
    await send(b, cid, "hello")
    await b.close()
    rows = stack.sql(
        "SELECT count(*) FROM realtime_outboxevent WHERE order_key IN (%s, %s)",
        cid,
        f"user:{bob.id}",
    )
    assert rows == [(0,)]
