"""How publications reach a node's sockets: the hub's `hub.pub` handler and the head check.

Each node receives one layer message per publication (already encoded) and
loops over its local subscribers; every delivery goes through the socket's
cursor, so a lost, repeated or reordered layer message changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from monitoring import metrics
from realtime.node import delivery
from realtime.node.connection import Connection
from realtime.node.hub import Hub
from realtime.topics.events import HUB_MESSAGE, group_name, pub_text
from realtime.topics.service import namespace_of
from realtime.topics.store import get_store

log = logging.getLogger("tether.topics")

# Hub group → topic, for the groups this node's sockets subscribed to.
TOPIC_OF_GROUP: dict[str, str] = {}


async def read_pubs(topic: str, after: int, upto: int) -> list[tuple[int, str]]:
    """The delivery cursors' reader for topics: encoded `pub` frames from history."""
    epoch, entries = await get_store().read_range(topic, namespace_of(topic), after, upto)
    if epoch is None:
        return []
    return [(offset, pub_text(topic, offset, epoch, data, ts)) for offset, ts, data in entries]


def follow_epoch(conn: Connection, topic: str, epoch: str) -> None:
    """History was reset (new epoch): deliver the new epoch from its start."""
    if conn.epochs.get(topic) not in (None, epoch):
        conn.epochs[topic] = epoch
        if topic in conn.cursors:
            conn.cursors[topic] = 0


def install(hub: Hub) -> None:
    """Register the topic handler on this node's hub."""

    async def on_pub(message: dict[str, Any]) -> None:
        topic = message["topic"]
        members = hub.groups.get(group_name(topic))
        if not members:
            return
        offset, epoch, text = message["offset"], message["epoch"], message["text"]
        metrics.PUBLICATIONS.inc()
        if "ts" in message:
            metrics.PUBLISH_DELIVER.observe(max(0.0, time.time() - message["ts"] / 1000))
        conns = list(members)
        metrics.FRAMES_OUT_PUB.inc(len(conns))
        for conn in conns:
            if conn.epochs.get(topic) != epoch:
                follow_epoch(conn, topic, epoch)
        await delivery.deliver_all(conns, topic, offset, text, read_pubs, lossy=True)

    hub.on(HUB_MESSAGE, on_pub)


async def check_heads(hub: Hub) -> None:
    """Catch every local subscriber up to its topics' heads in history.

    Covers what no later publication would reveal: the last publication of a
    burst lost by the layer, or everything published while Redis was away.
    """
    groups = {g: t for g, t in TOPIC_OF_GROUP.items() if g in hub.groups}
    for stale in set(TOPIC_OF_GROUP) - set(groups):
        TOPIC_OF_GROUP.pop(stale, None)
    if not groups:
        return
    heads = await get_store().heads(list(groups.values()))
    for group, topic in groups.items():
        if topic not in heads:
            continue
        offset, epoch = heads[topic]
        for conn in hub.members(group):
            if conn.epochs.get(topic) is None:
                continue  # still subscribing
            follow_epoch(conn, topic, epoch)
            if conn.cursors.get(topic, offset) < offset:
                await delivery.catch_up(conn, topic, read_pubs, head=offset, lossy=True)
