"""Chat across two daphne nodes on one PostgreSQL and Redis, and the stale-socket failure."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.support.blackhole import BlackholeProxy
from tests.support.chat import (
    collect,
    expect_message_from,
    expect_skipping,
    group,
    person,
    quiet,
    send,
)
from tests.support.live import http
from tests.support.names import unique
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient

FAST_HEARTBEAT = {"HEARTBEAT_INTERVAL": "1", "PING_TIMEOUT": "3"}


async def test_concurrent_senders_on_two_nodes_get_gap_free_seqs(two_nodes) -> None:
    a, b = two_nodes
    people = [person(a) for _ in range(4)]
    cid = group(a, people[0], *people[1:])
    sockets = [await p.socket(a if i % 2 else b) for i, p in enumerate(people)]
    per_sender = 20

    async def burst(i: int) -> list[dict]:
        acks = []
        for n in range(per_sender):
            acks.append(await send(sockets[i], cid, f"{i}:{n}", cid=f"c{i}-{n}"))
        return acks

    acks = [ack for batch in await asyncio.gather(*map(burst, range(4))) for ack in batch]
    total = per_sender * len(people)
    assert sorted(ack["seq"] for ack in acks) == list(range(1, total + 1))
    for ws in sockets:
        got = await collect(ws, "message", total, timeout=30)
        assert [m["seq"] for m in got] == list(range(1, total + 1))
        assert await quiet(ws, "message", 0.3) == []
    for ws in sockets:
        await ws.close()


async def test_the_same_send_racing_on_two_nodes_is_stored_once(two_nodes) -> None:
    a, b = two_nodes
    alice = person(a)
    cid = group(a, alice)
    on_a, on_b = await alice.socket(a), await alice.socket(b)
    for n in range(5):
        frame = {"type": "send", "id": f"race-{n}", "conversation": cid, "body": "once"}
        await asyncio.gather(on_a.send(frame), on_b.send(frame))
        ack_a = await expect_skipping(on_a, "ack", keep=True)
        ack_b = await expect_skipping(on_b, "ack", keep=True)
        assert ack_a["message_id"] == ack_b["message_id"] and ack_a["seq"] == ack_b["seq"]
        assert sorted([ack_a["duplicate"], ack_b["duplicate"]]) == [False, True]
    status, page = alice.api(a, "GET", f"/api/conversations/{cid}/messages/")
    assert status == 200 and [m["seq"] for m in page["messages"]] == [1, 2, 3, 4, 5]
    await on_a.close()
    await on_b.close()


async def test_presence_is_announced_exactly_once_across_nodes(two_nodes) -> None:
    a, b = two_nodes
    alice, bob = person(a), person(a)
    group(a, alice, bob)
    watcher = await bob.socket(a)
    for _ in range(3):
        sockets = await asyncio.gather(alice.socket(a), alice.socket(b))
        online = await quiet(watcher, "presence", 1.0)
        assert [(p["user"]["id"], p["status"]) for p in online] == [(alice.id, "online")]
        await asyncio.gather(*(ws.close() for ws in sockets))
        offline = await quiet(watcher, "presence", 1.0)
        assert [(p["user"]["id"], p["status"]) for p in offline] == [(alice.id, "offline")]
    await watcher.close()


async def test_typing_from_one_user_on_two_nodes_is_passed_on_once_a_second(two_nodes) -> None:
    a, b = two_nodes
    alice, bob = person(a), person(a)
    cid = group(a, alice, bob)
    watchers = [await bob.socket(a), await bob.socket(b)]
    on_a, on_b = await alice.socket(a), await alice.socket(b)
    for round_ in range(2):
        typing = {"type": "typing", "conversation": cid}
        await asyncio.gather(on_a.send(typing), on_b.send(typing))
        # Each node passes a typing on before the message sent after it: once both
        # messages are in, every typing that went out has arrived.
        await asyncio.gather(send(on_a, cid, f"a{round_}"), send(on_b, cid, f"b{round_}"))
        for watcher in watchers:
            await collect(watcher, "message", 2)
            seen = await quiet(watcher, "typing", 0.1)
            assert [t["user"]["id"] for t in seen] == [alice.id] * (round_ + 1)
        if round_ == 0:
            await asyncio.sleep(1.1)  # the next second: one more may pass
    for ws in (*watchers, on_a, on_b):
        await ws.close()


async def test_a_killed_nodes_users_go_offline(production_stack, make_node) -> None:
    a = make_node(production_stack, unique("survivor-"), **FAST_HEARTBEAT)
    b = make_node(production_stack, unique("doomed-"), **FAST_HEARTBEAT)
    alice, bob = person(a), person(a)
    group(a, alice, bob)
    watcher = await bob.socket(a)
    await alice.socket(b)
    assert (await expect_skipping(watcher, "presence"))["status"] == "online"
    killed = time.monotonic()
    b.stop(signal.SIGKILL)
    # Within PING_TIMEOUT + 10 s of the crash, as PROTOCOL 6 says.
    offline = await expect_skipping(watcher, "presence", timeout=3 + 10)
    assert offline["user"]["id"] == alice.id and offline["status"] == "offline"
    assert time.monotonic() - killed <= 3 + 10
    await watcher.close()


@pytest.mark.parametrize("relogin_on", ["other node", "same node"])
async def test_stale_connection_after_relogin_never_swallows_a_message(
    production_stack, make_node, relogin_on: str
) -> None:
    """The classic failure: A's old socket is dead but not closed when A logs in again."""
    a = make_node(production_stack, unique("a-"), **FAST_HEARTBEAT)
    b = make_node(production_stack, unique("b-"), **FAST_HEARTBEAT)
    alice, bob = person(a), person(a)
    status, direct = alice.api(
        a, "POST", "/api/conversations/", {"kind": "direct", "members": [bob.id]}
    )
    cid = direct["id"]
    proxy = await BlackholeProxy(a.port).start()
    old = await WsClient.open(f"ws://127.0.0.1:{proxy.port}/ws/chat/", token=alice.token)
    old_id = (await old.welcome())["connection_id"]
    bob_ws = await bob.socket(b)
    await send(bob_ws, cid, "before")
    assert (await expect_skipping(old, "message"))["body"] == "before"

    proxy.cut()  # the app is gone; its TCP connection is not
    status, body, _ = http(
        "POST",
        a.url + "/api/auth/token/",
        {"username": alice.username, "password": "a-Long-test-passw0rd"},
    )
    assert status == 200
    relogin_node = b if relogin_on == "other node" else a
    new = await WsClient.open(f"{relogin_node.ws_url}/ws/chat/", token=body["token"])
    await new.welcome()
    await new.send({"type": "sync", "id": "s", "positions": {cid: 1}})
    assert (await expect_skipping(new, "synced", keep=True))["conversations"][cid]["seq"] == 1

    for n in range(5):  # the first and every later message reaches the new socket
        await send(bob_ws, cid, f"after {n}")
        message = await expect_message_from(new, bob.id)
        assert (message["seq"], message["body"]) == (2 + 2 * n, f"after {n}")
        await send(new, cid, f"reply {n}")  # and the other way
        assert (await expect_message_from(bob_ws, alice.id))["body"] == f"reply {n}"

    def old_record_gone() -> bool:
        rows = production_stack.sql(
            "SELECT count(*) FROM realtime_liveconnection WHERE id = %s", old_id
        )
        return rows[0][0] == 0

    await eventually(old_record_gone, timeout=3 + 4, what="the heartbeat to remove the dead socket")
    await send(bob_ws, cid, "after cleanup")
    assert (await expect_message_from(new, bob.id))["body"] == "after cleanup"
    await proxy.close()
    await new.close()
    await bob_ws.close()


async def test_a_node_restarted_under_its_name_announces_its_dead_users_offline(
    production_stack, make_node
) -> None:
    a = make_node(production_stack, unique("steady-"))
    name = unique("restarted-")
    b = make_node(production_stack, name, **FAST_HEARTBEAT)
    alice, bob = person(a), person(a)
    group(a, alice, bob)
    watcher = await bob.socket(a)
    await alice.socket(b)
    assert (await expect_skipping(watcher, "presence"))["status"] == "online"
    b.stop(signal.SIGKILL)
    b.start()  # same NODE_NAME: its old records go at once, before any reaper
    await asyncio.to_thread(http, "GET", b.url + "/health/")
    offline = await expect_skipping(watcher, "presence", timeout=5)
    assert offline["user"]["id"] == alice.id and offline["status"] == "offline"
    await watcher.close()


async def test_sigterm_drains_with_1012_and_clients_resume_on_the_other_node(
    production_stack, make_node
) -> None:
    """Issue 7 point 8: a draining node closes with 1012, removes its records and
    exits; its clients resume on the other node with nothing lost."""
    a = make_node(production_stack, "drain-a")
    b = make_node(production_stack, "drain-b")
    alice, bob = person(a), person(a)
    cid = group(a, alice, bob)
    on_a = await alice.socket(a)
    bob_ws = await bob.socket(b)
    first = await send(bob_ws, cid, "before the drain")
    assert (await expect_message_from(on_a, bob.id))["seq"] == first["seq"]

    async def bob_keeps_sending() -> list[int]:
        seqs = []
        for n in range(30):
            seqs.append((await send(bob_ws, cid, f"during {n}"))["seq"])
            await asyncio.sleep(0.02)
        return seqs

    sender = asyncio.create_task(bob_keeps_sending())
    started = time.monotonic()
    exit_code = await asyncio.to_thread(a.stop, signal.SIGTERM)
    drained_in = time.monotonic() - started
    assert exit_code == 0 and drained_in < 15, drained_in
    assert await on_a.close_code() == 1012
    assert production_stack.sql("SELECT count(*) FROM realtime_node WHERE name = 'drain-a'") == [
        (0,)
    ]
    # Resume on the node that is left, from the last seq this socket saw.
    again = await alice.socket(b)
    await again.send({"type": "sync", "id": "s", "positions": {cid: first["seq"]}})
    seqs = await sender
    await expect_skipping(again, "synced", 10, keep=True)
    got = [m["seq"] for m in await collect(again, "message", seqs[-1] - first["seq"], 20)]
    assert got == list(range(first["seq"] + 1, seqs[-1] + 1)), got
    assert await quiet(again, "message", 0.3) == []
    await again.close()
    await bob_ws.close()


async def test_pipelined_sends_from_both_nodes_batch_without_gaps_or_doubles(
    production_stack, make_node
) -> None:
    """Many sends in flight at once, so group commit stores them together: repeated
    keys, two conversations per batch, senders on both nodes."""
    limits = {"RATE_LIMIT_PER_SECOND": "1000", "RATE_LIMIT_BURST": "1000"}
    a = make_node(production_stack, "node-a", **limits)
    b = make_node(production_stack, "node-b", **limits)
    people = [person(a) for _ in range(6)]
    rooms = [group(a, people[0], *people[1:]), group(a, people[1], *people[2:4])]
    member_of = {i: rooms if 1 <= i <= 3 else rooms[:1] for i in range(6)}
    sockets = [await p.socket(a if i % 2 else b) for i, p in enumerate(people)]
    per_socket = 40

    async def fire(i: int) -> list[dict]:
        frames = []
        for n in range(per_socket):
            # Every fifth send repeats the previous key: one message, two acks.
            key = f"k{i}-{n - 1 if n % 5 == 4 else n}"
            room = member_of[i][(n - 1 if n % 5 == 4 else n) % len(member_of[i])]
            frames.append({"type": "send", "id": key, "conversation": room, "body": key})
        await asyncio.gather(*(sockets[i].send(f) for f in frames))
        return [await expect_skipping(sockets[i], "ack", timeout=30, keep=True) for _ in frames]

    acks = [ack for batch in await asyncio.gather(*map(fire, range(6))) for ack in batch]
    stored: dict[str, dict[str, int]] = {room: {} for room in rooms}
    for ack in acks:
        first = stored[ack["conversation"]].setdefault(ack["message_id"], ack["seq"])
        assert first == ack["seq"]  # a repeated key gets the first message back
    assert sum(ack["duplicate"] for ack in acks) == 6 * (per_socket // 5)
    for room in rooms:
        assert sorted(stored[room].values()) == list(range(1, len(stored[room]) + 1))
    for i, ws in enumerate(sockets):
        total = sum(len(stored[room]) for room in member_of[i])
        got = await collect(ws, "message", total, timeout=30)
        for room in member_of[i]:
            seqs = [m["seq"] for m in got if m["conversation"] == room]
            assert seqs == list(range(1, len(stored[room]) + 1))
        assert await quiet(ws, "message", 0.3) == []
    for ws in sockets:
        await ws.close()
