"""Topics' work on every node (a `NodePart`, added by realtime/apps.py): the hub's
`hub.pub` handler, the head check, the demo feed, and the node's figures published
on the staff topic `ops:stats` behind `/ops/`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.conf import settings

from monitoring.stats import OPS_TOPIC
from realtime.protocol import TetherError
from realtime.topics import fanout
from realtime.topics.demo_feed import run_demo_feed
from realtime.topics.service import apublish
from realtime.topics.store import MemoryStore, get_store

if TYPE_CHECKING:
    from realtime.node.runtime import NodeRuntime

log = logging.getLogger("tether.topics")


class TopicsNode:
    def start(self, runtime: NodeRuntime) -> None:
        fanout.install(runtime.hub)
        if settings.DEMO_FEED:
            runtime.run_in_background(run_demo_feed(settings.DEMO_FEED), "tether-demo-feed")

    async def maintain(self, runtime: NodeRuntime) -> None:
        if runtime.last_stats is not None:
            await _publish_stats(runtime.name, runtime.last_stats)
        await fanout.check_heads(runtime.hub)

    async def recheck_users(self, user_ids: Iterable[int]) -> None:
        return None  # a subscription rests on no other socket

    def sizes(self) -> dict[str, int]:
        # Both grow only with topics that sockets on this node follow (embedded:
        # with topics published to), never with names merely read.
        out = {"topic_groups": len(fanout.TOPIC_OF_GROUP)}
        store = get_store()
        if isinstance(store, MemoryStore):
            out["topics_in_memory"] = len(store.topics)
        return out


async def _publish_stats(node: str, stats: dict[str, Any]) -> None:
    """Feed the staff topic behind `/ops/` (skipped if `ops` is not a namespace)."""
    try:
        await apublish(OPS_TOPIC, {"node": node, **stats})
    except TetherError:
        pass  # the operator configured no `ops` namespace
    except Exception:
        log.warning("could not publish node stats", exc_info=True)


topics_node = TopicsNode()
