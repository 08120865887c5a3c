"""Subscription tokens (PROTOCOL 11): a namespace with access `token` over real sockets."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from tests.support.live import DaphneNode
from tests.support.names import unique
from tests.support.topics import published
from tests.support.wsclient import WsClient

SECRET = "t" * 48
NAMESPACES = {
    "prices": {"access": "open"},
    "room": {"history_size": 10, "history_ttl": 600, "access": "token"},
}


def signed(seconds: float = 300, **claims: Any) -> str:
    return jwt.encode({"exp": int(time.time() + seconds), **claims}, SECRET, "HS256")


@pytest.fixture
def token_node(stack, make_node) -> DaphneNode:
    return make_node(stack, JWT_SECRET=SECRET, TOPIC_NAMESPACES=json.dumps(NAMESPACES))


async def subscribe(client: WsClient, topic: str, token: str | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "id": "s", "topic": topic}
    if token is not None:
        frame["token"] = token
    await client.send(frame)
    return await client.recv()


async def test_a_token_namespace_needs_a_token_for_this_user_and_topic(token_node) -> None:
    sub = unique("app-")
    client = await WsClient.open(f"{token_node.ws_url}/ws/stream/", token=signed(sub=sub))
    await client.welcome()
    topic = f"room:{unique('r')}"
    refused = [
        None,
        signed(sub=sub, topic=f"{topic}x"),  # another topic
        signed(sub=unique("app-"), topic=topic),  # another user
        signed(seconds=-30, sub=sub, topic=topic),  # expired
        signed(sub=sub),  # no topic
        jwt.encode({"sub": sub, "topic": topic, "exp": int(time.time()) + 60}, "x" * 48),
    ]
    for token in refused:
        reply = await subscribe(client, topic, token)
        assert (reply["type"], reply["code"]) == ("error", "forbidden"), token
    reply = await subscribe(client, topic, signed(sub=sub, topic=topic))
    assert reply["type"] == "subscribed" and reply["topic"] == topic
    staff = token_node.staff_token(unique("ops"))
    published(token_node, staff, topic, {"n": 1})
    assert (await client.expect("pub"))["data"] == {"n": 1}
    # Leaving needs no token; the subscription lasted without one being asked again.
    await client.send({"type": "unsubscribe", "id": "u", "topic": topic})
    assert (await client.expect("unsubscribed"))["topic"] == topic
    await client.close()


async def test_a_user_without_external_id_is_named_by_id(token_node) -> None:
    client = await WsClient.open(
        f"{token_node.ws_url}/ws/stream/", token=token_node.register(unique())
    )
    user_id = (await client.welcome())["user"]["id"]
    topic = f"room:{unique('r')}"
    reply = await subscribe(client, topic, signed(sub=str(user_id), topic=topic))
    assert reply["type"] == "subscribed"
    reply = await subscribe(client, f"{topic}2", signed(sub=str(user_id + 1), topic=f"{topic}2"))
    assert reply["code"] == "forbidden"
    await client.close()
