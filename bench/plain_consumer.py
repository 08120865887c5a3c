"""The baseline of `bench/feeds_bench.py`: fan-out written by hand with plain Channels.

One `group_add` per connection on connect, one `group_send` per publication (by the
benchmark's publisher), each member consumer writing the text to its socket. Served
at `/ws/plain/` by the same daphne as Tether, through `bench/plain_asgi.py`. It
ignores authentication (the middleware still runs).
"""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "bench-feed"


class PlainFeedConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def bench_pub(self, message: dict[str, Any]) -> None:
        await self.send(text_data=message["text"])
