"""Control messages to sockets on any node, through their own channel names."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime.models import LiveConnection
from realtime.protocol import Close

log = logging.getLogger("tether.control")


async def close_channels(channel_names: list[str], code: int) -> None:
    """Ask each socket, wherever it lives, to close with `code` and clean up."""
    layer = get_channel_layer()
    if layer is None:
        return
    for name in channel_names:
        try:
            await layer.send(name, {"type": "tether.close", "code": code})
        except Exception:
            # Its node is gone or the channel is full: the reaper removes the record.
            log.warning("could not reach %s to close it with %d", name, code)


def close_connections_where(code: int, **filters: Any) -> int:
    """Close every live socket matching the registry filters; how many were asked."""
    names = list(LiveConnection.objects.filter(**filters).values_list("channel_name", flat=True))
    if names:
        async_to_sync(close_channels)(names, code)
    return len(names)


def disconnect(connection_ids: list[str]) -> int:
    """An operator's kick: close these sockets with 4403 on whichever node holds them.

    Shared by the staff API and the admin action. Returns how many records were found;
    each holding node closes its socket and removes the record itself.
    """
    if not connection_ids:
        return 0
    return close_connections_where(Close.FORBIDDEN, id__in=list(connection_ids))


def _send_to_user_sockets(user_ids: list[int], message: dict[str, Any]) -> None:
    names = list(
        LiveConnection.objects.filter(user_id__in=user_ids, endpoint="chat").values_list(
            "channel_name", flat=True
        )
    )
    if names:
        async_to_sync(_send_all)(names, message)


async def _send_all(channel_names: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    for name in channel_names:
        try:
            await layer.send(name, dict(message))
        except Exception:
            log.warning("could not reach %s with %s", name, message.get("type"))


def announce_joined(conversation_id: str, user_ids: list[int]) -> None:
    """Every open chat socket of these users subscribes and receives `joined`."""
    _send_to_user_sockets(user_ids, {"type": "tether.joined", "conversation": conversation_id})


def announce_left(conversation_id: str, user_id: int) -> None:
    """Every open chat socket of this user unsubscribes and receives `left`."""
    _send_to_user_sockets([user_id], {"type": "tether.left", "conversation": conversation_id})
