"""What travels over the node hub for chat, and how each node hands it to its sockets.

Publishers encode a frame once; each node receives one layer message per
conversation group and loops over its local sockets.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from monitoring import metrics
from realtime.chat import conversations, messages, presence
from realtime.node import delivery
from realtime.node.db import in_pool
from realtime.node.hub import PRESENCE_GROUP, Hub, hub_layer
from realtime.node.layer_compat import group_send_many
from realtime.protocol import encode, now_ms, user_repr

log = logging.getLogger("tether.fanout")


def conversation_group(conversation_id: str) -> str:
    return f"conv.{conversation_id}"


read_messages = in_pool(messages.read_range)


async def publish_conversation_messages(conversation_id: str, items: list[tuple[int, str]]) -> None:
    """Stored messages of one conversation, (seq, encoded frame) in increasing seq:
    one layer message per node for all of them."""
    await publish_many_conversations({conversation_id: items})


async def publish_many_conversations(items_by_id: dict[str, list[tuple[int, str]]]) -> None:
    """Stored messages of several conversations (a batch): one layer message per
    conversation and node, sent together."""
    await group_send_many(
        hub_layer(),
        [
            (conversation_group(cid), {"type": "hub.message", "key": cid, "items": items})
            for cid, items in items_by_id.items()
        ],
    )


async def publish_conversation_message(conversation_id: str, seq: int, text: str) -> None:
    await publish_conversation_messages(conversation_id, [(seq, text)])


async def publish_conversation_event(
    conversation_id: str, frame: dict[str, Any], exclude_user: int | None
) -> None:
    """A frame for the members' sockets, not sequenced (receipts, typing)."""
    await hub_layer().group_send(
        conversation_group(conversation_id),
        {
            "type": "hub.event",
            "key": conversation_id,
            "text": encode(frame),
            "exclude_user": exclude_user,
        },
    )


@database_sync_to_async
def _presence_change(user_id: int) -> tuple[str | None, dict[str, Any], list[int]]:
    status = presence.update(user_id)
    if status is None:
        return None, {}, []
    user = get_user_model().objects.get(pk=user_id)
    return (
        status,
        user_repr(user),
        conversations.co_members(user_id),
    )


async def announce_presence(user_id: int) -> None:
    """Evaluate a user's status and, on a change, tell everyone sharing a conversation."""
    status, user, audience = await _presence_change(user_id)
    if status is None or not audience:
        return
    frame = {"type": "presence", "user": user, "status": status, "ts": now_ms()}
    await hub_layer().group_send(
        PRESENCE_GROUP, {"type": "hub.presence", "text": encode(frame), "audience": audience}
    )


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
        for conn in hub.members(conversation_group(message["key"])):
            if conn.user_id != exclude and not conn.closing:
                await conn.send_text(message["text"])

    async def on_presence(message: dict[str, Any]) -> None:
        audience = set(message["audience"])
        for conn in list(local_connections()):
            if conn.info.endpoint == "chat" and conn.user_id in audience and not conn.closing:
                await conn.send_text(message["text"])

    hub.on("hub.message", on_message)
    hub.on("hub.event", on_event)
    hub.on("hub.presence", on_presence)


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
