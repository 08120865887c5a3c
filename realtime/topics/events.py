"""The one way out for topic publications (docs/architecture.md, "One way out for
events"): once stored, each leaves here, once per node over the hub, and nothing
else in topics/ publishes to the channel layer. Webhooks and signals hook in here.
"""

from __future__ import annotations

import hashlib
import json
import logging

from realtime.node.hub import hub_layer

log = logging.getLogger("tether.topics")

# What leaves over the hub, and topics/fanout.py receives on each node.
HUB_MESSAGE = "hub.pub"


def group_name(topic: str) -> str:
    """The hub group of a topic (channel-layer group names allow neither `:` nor `@`).

    Not cached: a cache keyed by names that anyone may subscribe to would grow with
    every random name, and the hash costs well under a microsecond."""
    return "topic." + hashlib.blake2b(topic.encode(), digest_size=12).hexdigest()


def pub_text(topic: str, offset: int, epoch: str, data: str, ts: int) -> str:
    """The encoded `pub` frame, built around the already-encoded data (one encoding)."""
    return (
        f'{{"type":"pub","topic":{json.dumps(topic)},"offset":{offset},'
        f'"epoch":{json.dumps(epoch)},"data":{data},"ts":{ts}}}'
    )


async def published(topic: str, offset: int, epoch: str, data: str, ts: int) -> None:
    """A stored publication (`data` already encoded) for every node with subscribers."""
    try:
        await hub_layer().group_send(
            group_name(topic),
            {
                "type": HUB_MESSAGE,
                "topic": topic,
                "offset": offset,
                "epoch": epoch,
                "ts": ts,
                "text": pub_text(topic, offset, epoch, data, ts),
            },
        )
    except Exception:
        # Stored: the nodes' head checks deliver it from history.
        log.warning("publication %s@%d stored but not fanned out", topic, offset, exc_info=True)
