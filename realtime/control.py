"""Control messages to sockets on any node, through their own channel names."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from realtime.models import LiveConnection

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
