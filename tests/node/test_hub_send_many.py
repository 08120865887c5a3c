"""`layer_compat.group_send_many`: a batch's group messages in one round trip, as
group_send would send them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.exceptions
from channels.layers import InMemoryChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from realtime.node.layer_compat import group_send_many


@pytest.fixture(params=["memory", "redis"])
async def layers(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, Any]]:
    """A publishing node's layer and a receiving node's layer."""
    if request.param == "memory":
        layer = InMemoryChannelLayer()
        yield layer, layer
        return
    url = request.getfixturevalue("redis_service").url
    sender = RedisPubSubChannelLayer(hosts=[{"address": url}])
    receiver = RedisPubSubChannelLayer(hosts=[{"address": url}])
    yield sender, receiver
    await sender.flush()
    await receiver.flush()


async def test_every_message_reaches_its_group_in_order(layers) -> None:
    sender, receiver = layers
    channel = await receiver.new_channel()
    other = await receiver.new_channel()
    await receiver.group_add("conv.a", channel)
    await receiver.group_add("conv.b", channel)
    await receiver.group_add("conv.c", other)
    sends = [
        ("conv.a", {"type": "hub.message", "key": "a", "items": [[1, "one"]]}),
        ("conv.b", {"type": "hub.message", "key": "b", "items": [[1, "uno"]]}),
        ("conv.a", {"type": "hub.message", "key": "a", "items": [[2, "two"], [3, "three"]]}),
        ("conv.c", {"type": "hub.message", "key": "c", "items": [[7, "seven"]]}),
        ("conv.nobody", {"type": "hub.message", "key": "x", "items": []}),
    ]
    await group_send_many(sender, sends)
    got = [await asyncio.wait_for(receiver.receive(channel), 5) for _ in range(3)]
    assert [(m["key"], [list(i) for i in m["items"]]) for m in got] == [
        ("a", [[1, "one"]]),
        ("b", [[1, "uno"]]),
        ("a", [[2, "two"], [3, "three"]]),
    ]
    assert (await asyncio.wait_for(receiver.receive(other), 5))["key"] == "c"


async def test_a_single_message_and_none(layers) -> None:
    sender, receiver = layers
    channel = await receiver.new_channel()
    await receiver.group_add("conv.solo", channel)
    await group_send_many(sender, [])
    await group_send_many(sender, [("conv.solo", {"type": "hub.event", "key": "solo"})])
    assert (await asyncio.wait_for(receiver.receive(channel), 5))["key"] == "solo"


async def test_redis_gone_fails_the_send() -> None:
    """A batch whose publish fails is not acknowledged (send_queue answers `internal`)."""
    layer = RedisPubSubChannelLayer(hosts=[{"address": "redis://127.0.0.1:1"}])
    with pytest.raises(redis.exceptions.ConnectionError):
        await group_send_many(layer, [("conv.a", {"type": "x"}), ("conv.b", {"type": "y"})])
