"""`/ws/stream/`: the topic endpoint (PROTOCOL 7) on the base consumer."""

from __future__ import annotations

from realtime.topics import handlers as stream_handlers
from realtime.transport.consumer import BASE_HANDLERS, TetherConsumer


class StreamConsumer(TetherConsumer):
    """`/ws/stream/`: topic subscriptions (PROTOCOL 7)."""

    endpoint = "stream"
    handlers = {**BASE_HANDLERS, **stream_handlers.STREAM_HANDLERS}

    async def on_leave(self) -> None:
        await stream_handlers.unsubscribe_all(self)

    async def on_rights_changed(self) -> None:
        await stream_handlers.rights_changed(self)
