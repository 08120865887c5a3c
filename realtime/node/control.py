"""Control messages to sockets on any node (kick, revoked credential, changed rights;
joined and left from chat/events.py).

A socket has no channel-layer channel of its own: its record names its node's
control channel (`LiveConnection.channel_name`, read by the node hub), and one
layer message per node carries the ids of that node's sockets to act on.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime.models import LiveConnection
from realtime.node.connection import Connection
from realtime.node.hub import Hub
from realtime.protocol import Close

log = logging.getLogger("tether.control")

CONTROL = "hub.control"


async def send_control(targets: list[tuple[str, str]], message: dict[str, Any]) -> None:
    """`message` to each (node channel, connection id) socket: one layer message per node."""
    by_node: dict[str, list[str]] = defaultdict(list)
    for channel, connection_id in targets:
        by_node[channel].append(connection_id)
    layer = get_channel_layer()
    for channel, ids in by_node.items():
        try:
            await layer.send(channel, {"type": CONTROL, "connections": ids, "control": message})
        except Exception:
            # Its node is gone or unreachable: the reaper removes the records.
            log.warning("could not reach %d sockets on %s with %s", len(ids), channel, message)


def send_where(message: dict[str, Any], **filters: Any) -> int:
    targets = list(LiveConnection.objects.filter(**filters).values_list("channel_name", "id"))
    if targets:
        async_to_sync(send_control)(targets, message)
    return len(targets)


def close_connections_where(code: int, **filters: Any) -> int:
    """Close every live socket matching the registry filters; how many were asked."""
    return send_where({"type": "tether.close", "code": code}, **filters)


def disconnect(connection_ids: list[str]) -> int:
    """An operator's kick: close these sockets with 4403 on whichever node holds them.

    Shared by the staff API and the admin action. Returns how many records were found;
    each holding node closes its socket and removes the record itself.
    """
    if not connection_ids:
        return 0
    return close_connections_where(Close.FORBIDDEN, id__in=list(connection_ids))


def rights_changed(user_ids: Iterable[int]) -> int:
    """These users' rights changed (staff status, permissions, groups): each of their
    sockets, on whichever node holds it, ends what the user may no longer do (the
    endpoint decides what that is). Returns how many sockets were told."""
    ids = sorted(set(user_ids))
    if not ids:
        return 0
    return send_where({"type": "tether.rights_changed"}, user_id__in=ids)


def install(hub: Hub, local: Callable[[str], Connection | None]) -> None:
    """Hand control messages arriving at this node to the sockets they name."""

    async def on_control(message: dict[str, Any]) -> None:
        for connection_id in message["connections"]:
            conn = local(connection_id)
            if conn is not None and not conn.closing:
                conn.control(dict(message["control"]))

    hub.on(CONTROL, on_control)
