"""channels-redis internals Tether relies on: many publications in one round trip,
and the ring that spreads names over several Redis servers.

The only place outside `realtime/transport/` that reaches inside another package:
the pub/sub layer's channel names, shards, lock and Redis client, and the layers'
hash. Each is declared in `realtime/transport/patches.py` (REDIS_PUBSUB_LAYER,
REDIS_PUBSUB_LOOP_LAYER, REDIS_SHARD, REDIS_HASH) and checked at start. Other
layers get plain `group_send` calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.utils import _consistent_hash


def shard_index(name: str, servers: int) -> int:
    """Which of `servers` Redis servers holds `name`: the one channels-redis picks for
    a channel or group of that name (docs/deployment.md, "Several Redis servers")."""
    return _consistent_hash(name, servers)


async def group_send_many(layer: Any, sends: list[tuple[str, dict[str, Any]]]) -> None:
    """Send several group messages; on the Redis pub/sub layer in one round trip per shard.

    channels-redis publishes each `group_send` under a per-shard lock and waits for
    Redis before the next one, so a batch of sends to 30 conversations cost 30
    round trips in a row, each waiting for a turn of a busy event loop (docs/benchmarks.md, "Chat":
    most of the send→delivery tail). Here the same PUBLISH commands, with the
    layer's own channel names and serialization, go out in one pipeline.
    """
    inner = _pubsub_loop_layer(layer)
    if inner is None or len(sends) == 1:
        for group, message in sends:
            await layer.group_send(group, message)
        return
    by_shard: dict[Any, list[tuple[str, bytes]]] = {}
    for group, message in sends:
        channel = inner._get_group_channel_name(group)
        by_shard.setdefault(inner._get_shard(channel), []).append(
            (channel, layer.serialize(message))
        )
    await asyncio.gather(*(_publish_all(shard, items) for shard, items in by_shard.items()))


def _pubsub_loop_layer(layer: Any) -> Any:
    """channels-redis' per-loop pub/sub layer behind `layer`, or None (other layers)."""
    get = getattr(layer, "_get_layer", None)
    if get is None or not hasattr(layer, "serialize"):
        return None
    inner = get()
    if not all(hasattr(inner, name) for name in ("_get_group_channel_name", "_get_shard")):
        return None
    return inner


async def _publish_all(shard: Any, items: list[tuple[str, bytes]]) -> None:
    async with shard._lock:  # the lock its own `publish` takes around the connection
        shard._ensure_redis()
        pipe = shard._redis.pipeline(transaction=False)
        for channel, data in items:
            pipe.publish(channel, data)
        await pipe.execute()
