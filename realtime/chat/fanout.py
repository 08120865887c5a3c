"""How each node hands chat news arriving over its hub to its sockets.

The news leaves through chat/events.py, encoded once; each node receives one
layer message per conversation group and loops over its local sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from channels.db import database_sync_to_async

from monitoring import metrics
from realtime.chat import messages
from realtime.chat.events import HUB_EVENT, HUB_MESSAGE, HUB_PRESENCE, conversation_group
from realtime.node import delivery
from realtime.node.connection import Connection
from realtime.node.db import in_pool
from realtime.node.hub import Hub

log = logging.getLogger("tether.fanout")


read_messages = in_pool(messages.read_range)


def install(hub: Hub, local_connections: Any) -> None:
    """Register the chat handlers on this node's hub."""

    async def on_message(message: dict[str, Any]) -> None:
        key = message["key"]
        members = hub.members(conversation_group(key))
        items = message["items"]
        metrics.FRAMES_OUT_MESSAGE.inc(len(members) * len(items))
        await delivery.deliver_run(members, key, items, read_messages)

    async def on_event(message: dict[str, Any]) -> None:
        exclude = message.get("exclude_user")
        key = message["key"]
        for conn in hub.members(conversation_group(key)):
            # The cursor, checked at each send: a socket removed while earlier ones
            # were written to has no cursor any more (delivery.stop).
            if conn.user_id != exclude and not conn.closing and key in conn.cursors:
                await conn.send_text(message["text"])

    async def on_presence(message: dict[str, Any]) -> None:
        audience = set(message["audience"])
        shared = message.get("conversations", ())
        for conn in list(local_connections()):
            if (
                conn.info.endpoint == "chat"
                and conn.user_id in audience
                and not conn.closing
                and still_shares(conn, shared)
            ):
                await conn.send_text(message["text"])

    hub.on(HUB_MESSAGE, on_message)
    hub.on(HUB_EVENT, on_event)
    hub.on(HUB_PRESENCE, on_presence)


def still_shares(conn: Connection, conversations: Iterable[str]) -> bool:
    """Whether a socket in a presence's audience still shares a conversation with its
    user (`conversations`: that user's). The audience was read when the presence
    changed; a socket removed from one of those conversations since (it got `left`)
    must then be subscribed to another of them: otherwise it may share none."""
    removed = False
    for cid in conversations:
        if cid in conn.cursors:
            return True
        removed = removed or cid in conn.removed
    return not removed


@database_sync_to_async
def _heads(ids: list[str]) -> dict[str, int]:
    from realtime.models import Conversation

    out: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        out.update(
            Conversation.objects.filter(id__in=ids[start : start + 500]).values_list(
                "id", "last_seq"
            )
        )
    return out


async def check_heads(hub: Hub) -> None:
    """Catch every local socket up to its conversations' heads in the store.

    Covers what no later message would reveal: the last message of a burst lost
    by the layer, or everything published while Redis was away.
    """
    keys = [g.split(".", 1)[1] for g in hub.groups if g.startswith("conv.")]
    if not keys:
        return
    heads = await _heads(keys)
    for key, head in heads.items():
        for conn in hub.members(conversation_group(key)):
            if conn.cursors.get(key, head) < head:
                await delivery.catch_up(conn, key, read_messages, head=head)
