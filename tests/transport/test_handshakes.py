"""Handshakes per address bounded before authentication; ping/pong bounded too."""

from __future__ import annotations

import websockets

from realtime.transport.handshakes import AddressBuckets
from tests.support.live import http
from tests.support.names import unique
from tests.support.wsclient import WsClient


def test_each_address_has_its_own_bucket_and_few_are_remembered() -> None:
    buckets = AddressBuckets(max_addresses=3)
    assert [buckets.allow("a", 1, 2, 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.allow("b", 1, 2, 0.0)  # another address is not held back
    assert buckets.allow("a", 1, 2, 1.0)  # refilled a second later
    for other in ("c", "d", "e"):
        buckets.allow(other, 1, 2, 1.0)
    assert len(buckets.buckets) == 3 and "a" not in buckets.buckets


async def test_a_flood_of_junk_tickets_is_refused_before_authentication(
    embedded_stack, make_node
) -> None:
    node = make_node(embedded_stack, HANDSHAKE_RATE_PER_SECOND="1", HANDSHAKE_BURST="5")
    closes, refused = [], 0
    for _ in range(12):
        try:
            client = await WsClient.open(f"{node.ws_url}/ws/chat/?ticket=tk_{unique()}")
        except websockets.InvalidStatus as error:
            assert error.response.status_code == 403
            refused += 1
            continue
        closes.append(await client.close_code())
    # The burst reached authentication (and was refused there: junk tickets);
    # the rest never cost a database read.
    assert set(closes) == {4401} and 5 <= len(closes) <= 7 and refused >= 5
    _, body, _ = http("GET", f"{node.url}/metrics")
    assert f"tether_handshakes_refused_total {float(refused)}" in body


async def test_ping_frames_beyond_their_own_bound_are_refused(embedded_stack, make_node) -> None:
    node = make_node(embedded_stack)  # per socket, in the node: the same on either stack
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=node.register(unique()))
    await client.welcome()
    for i in range(40):
        await client.send({"type": "ping", "id": f"p{i}"})
    replies = [await client.recv() for _ in range(40)]
    kinds = [r["type"] for r in replies]
    assert kinds.count("pong") >= 20 and "error" in kinds
    assert {r["code"] for r in replies if r["type"] == "error"} == {"rate_limited"}
    await client.send({"type": "sync", "id": "s", "positions": {}})
    assert (await client.expect("synced"))["id"] == "s"  # the socket stays up
    await client.close()
