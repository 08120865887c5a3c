"""The node hub: one channel-layer membership per group per node, local fan-out.

A connection never joins a layer group itself (docs/architecture.md, rule 3). The hub
joins `conv.<id>` with the node's own channel when the first local socket needs
it and leaves when the last one goes; a published frame is encoded once by the
publisher and costs one layer message per node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from realtime.node.connection import Connection

log = logging.getLogger("tether.hub")

PRESENCE_GROUP = "presence"
# Re-join every group this often: channels-redis drops members after
# `group_expiry` and forgets them all when Redis restarts.
REJOIN_SECONDS = 60.0


def hub_layer() -> Any:
    """The layer that carries hub traffic between nodes (settings.HUB_LAYER)."""
    return get_channel_layer(settings.HUB_LAYER)


Handler = Callable[[dict[str, Any]], Awaitable[None]]


class Hub:
    """Groups this node listens to, and the local sockets behind each."""

    def __init__(self) -> None:
        self.channel: str = ""
        # Where other nodes send control messages for this node's sockets.
        self.control_channel: str = ""
        self.groups: dict[str, set[Connection]] = {}
        self.handlers: dict[str, Handler] = {}
        self._layer: Any = None
        self._control_layer: Any = None
        self._task: asyncio.Task[Any] | None = None
        self._control_task: asyncio.Task[Any] | None = None
        self._rejoin_task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self._layer = hub_layer()
        # The default "specific." prefix on purpose: channels-redis pops one
        # per-process list for all of a process's channels under one lock; a
        # channel with another prefix starves behind the consumers' pops.
        self.channel = await self._layer.new_channel()
        self.groups = {PRESENCE_GROUP: set()}
        await self._layer.group_add(PRESENCE_GROUP, self.channel)
        self._task = asyncio.ensure_future(self._read_forever(self._layer, self.channel))
        # Control messages (kick, revoked credential, joined, left) ride the default
        # layer: list-based with Redis, it keeps a message while this node
        # reconnects, where pub/sub would drop a kick.
        self._control_layer = get_channel_layer()
        if self._control_layer is not None:
            self.control_channel = await self._control_layer.new_channel()
            self._control_task = asyncio.ensure_future(
                self._read_forever(self._control_layer, self.control_channel)
            )
        self._rejoin_task = asyncio.ensure_future(self._rejoin_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._control_task, self._rejoin_task) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._layer is not None:
            # All at once rather than one round trip after another: a node may be in
            # thousands of groups, and its stop is bounded (runtime.STOP_SECONDS).
            await asyncio.gather(
                *(self._layer.group_discard(group, self.channel) for group in self.groups),
                return_exceptions=True,
            )
        self.groups = {}

    def on(self, message_type: str, handler: Handler) -> None:
        """Handle layer messages of `message_type` arriving on the node channel."""
        self.handlers[message_type] = handler

    async def subscribe(self, group: str, conn: Connection) -> None:
        members = self.groups.get(group)
        if members is None:
            # A member at once: an `unsubscribe` while the layer is joined finds it
            # (added after, it would land in a set no longer listed, or keep one alive).
            self.groups[group] = {conn}
            await self._layer.group_add(group, self.channel)
            return
        members.add(conn)

    async def unsubscribe(self, group: str, conn: Connection) -> None:
        members = self.groups.get(group)
        if members is None:
            return
        members.discard(conn)
        if not members and group != PRESENCE_GROUP:
            del self.groups[group]
            try:
                await self._layer.group_discard(group, self.channel)
            except Exception:
                log.warning("could not leave group %s", group)

    def queue_depth(self) -> int:
        """Layer messages waiting for this node's channel (metrics; 0 when unknown)."""
        layer = self._layer
        if layer is None or not self.channel:
            return 0
        # RedisPubSubChannelLayer keeps one loop-bound layer per event loop.
        loop_layer = layer._get_layer() if hasattr(layer, "_get_layer") else layer
        queue = getattr(loop_layer, "channels", {}).get(self.channel)
        return queue.qsize() if hasattr(queue, "qsize") else 0

    def members(self, group: str) -> list[Connection]:
        return list(self.groups.get(group, ()))

    async def _read_forever(self, layer: Any, channel: str) -> None:
        failures = 0
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("hub: channel layer receive failed (%d)", failures)
                await asyncio.sleep(min(5.0, 0.2 * failures))
                if failures == 1 or failures % 10 == 0:
                    await self.rejoin()
                continue
            failures = 0
            handler = self.handlers.get(message.get("type", ""))
            if handler is None:
                continue
            try:
                await handler(message)
            except Exception:
                log.exception("hub: handling %s failed", message.get("type"))

    async def rejoin(self) -> None:
        """Join every group again (after a layer reconnect, and periodically)."""
        for group in list(self.groups):
            try:
                await self._layer.group_add(group, self.channel)
            except Exception:
                log.warning("hub: could not re-join %s", group)
                return

    async def _rejoin_forever(self) -> None:
        while True:
            await asyncio.sleep(REJOIN_SECONDS)
            await self.rejoin()
