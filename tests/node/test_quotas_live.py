"""Per-user quotas across two nodes (docs/security.md, "Limits"): a user who spreads
requests over nodes, sockets and REST still meets one count; others are not touched.

Rates are per day here so that a window never ends in the middle of a test.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.chat import Person, group, person
from tests.support.live import DaphneNode, http
from tests.support.names import unique
from tests.support.wsclient import WsClient

QUOTAS = {
    "QUOTA_MESSAGES": "3/day",
    "QUOTA_CONVERSATIONS": "2/day",
    "QUOTA_MEMBER_ADDS": "2/day",
    "QUOTA_USER_LOOKUPS": "2/day",
    "QUOTA_TOPIC_HISTORY": "2/day",
    "QUOTA_SUBSCRIPTIONS": "3/day",
}


@pytest.fixture
def nodes(production_stack, make_node) -> tuple[DaphneNode, DaphneNode]:
    return (
        make_node(production_stack, unique("qa-"), **QUOTAS),
        make_node(production_stack, unique("qb-"), **QUOTAS),
    )


def call(who: Person, node: DaphneNode, method: str, path: str, body: Any = None) -> tuple:
    return http(method, node.url + path, body, {"Authorization": f"Bearer {who.token}"})


def assert_limited(answer: tuple) -> None:
    status, body, headers = answer
    assert (status, body["error"]) == (429, "rate_limited"), body
    assert body["retry_after"] > 0
    assert int(headers["Retry-After"]) >= body["retry_after"] // 1000


def test_rest_quotas_count_per_user_across_nodes(nodes) -> None:
    one, two = nodes
    ann, bob, cat, dan = (person(one, n) for n in ("ann", "bob", "cat", "dan"))
    cid = group(one, ann, bob)  # 1st conversation
    assert call(ann, two, "POST", "/api/conversations/", {"kind": "group", "title": "b"})[0] == 201
    assert_limited(call(ann, one, "POST", "/api/conversations/", {"kind": "group", "title": "c"}))
    # Bob's own count is untouched by Ann's.
    assert call(bob, one, "POST", "/api/conversations/", {"kind": "group", "title": "d"})[0] == 201

    posts = f"/api/conversations/{cid}/messages/"
    for n, node in enumerate((one, two, one)):
        status, body, _ = call(ann, node, "POST", posts, {"id": f"m{n}", "body": "hi"})
        assert status == 201, body
    assert_limited(call(ann, two, "POST", posts, {"id": "m3", "body": "one too many"}))
    status, history, _ = call(bob, one, "GET", posts)
    assert [m["body"] for m in history["messages"]] == ["hi", "hi", "hi"]  # nothing stored
    assert call(bob, two, "POST", posts, {"id": "b0", "body": "bob may"})[0] == 201

    members = f"/api/conversations/{cid}/members/"
    assert call(ann, one, "POST", members, {"user": cat.id})[0] == 201
    assert call(ann, two, "POST", members, {"user": dan.id})[0] == 201
    assert_limited(call(ann, one, "POST", members, {"user": dan.id}))

    lookup = f"/api/users/?username={bob.username}"
    assert call(ann, one, "GET", lookup)[0] == 200
    assert call(ann, two, "GET", lookup)[0] == 200
    assert_limited(call(ann, one, "GET", lookup))


async def test_socket_quotas_answer_rate_limited_and_keep_the_socket(nodes) -> None:
    one, two = nodes
    ann, bob = person(one, "ann"), person(one, "bob")
    a1 = await WsClient.open(f"{one.ws_url}/ws/stream/", token=ann.token)
    a2 = await WsClient.open(f"{two.ws_url}/ws/stream/", token=ann.token)
    await a1.welcome()
    await a2.welcome()
    # History: one REST read and one `subscribe` with `since`, then refused.
    assert call(ann, one, "GET", "/api/topics/prices:Q/history/")[0] == 200
    await a2.send(
        {
            "type": "subscribe",
            "id": "s1",
            "topic": "prices:Q",
            "since": {"offset": 0, "epoch": "x"},
        }
    )
    assert (await a2.expect("subscribed"))["id"] == "s1"
    assert_limited(call(ann, two, "GET", "/api/topics/prices:Q/history/"))
    # Churn: the subscribe above was the 1st; two more anywhere, then refused.
    await a1.send({"type": "subscribe", "id": "s2", "topic": "prices:R"})
    assert (await a1.expect("subscribed"))["id"] == "s2"
    await a2.send({"type": "unsubscribe", "id": "u1", "topic": "prices:Q"})
    assert (await a2.expect("unsubscribed"))["topic"] == "prices:Q"
    await a1.send({"type": "subscribe", "id": "s3", "topic": "prices:S"})
    refused = await a1.expect("error")
    assert (refused["id"], refused["code"]) == ("s3", "rate_limited")
    assert refused["retry_after"] > 0
    # The socket stays up and keeps what it had.
    await a1.send({"type": "ping", "id": "p"})
    assert (await a1.expect("pong"))["id"] == "p"
    # Bob's sockets count apart.
    b = await WsClient.open(f"{two.ws_url}/ws/stream/", token=bob.token)
    await b.welcome()
    await b.send({"type": "subscribe", "id": "b1", "topic": "prices:S"})
    assert (await b.expect("subscribed"))["id"] == "b1"
    for socket in (a1, a2, b):
        await socket.close()
