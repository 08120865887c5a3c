"""`/ws/chat/`: the chat endpoint (PROTOCOL 6) on the base consumer."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async

from realtime.chat import conversations, events
from realtime.chat import handlers as chat_handlers
from realtime.node import delivery
from realtime.protocol import Frame
from realtime.transport.consumer import BASE_HANDLERS, TetherConsumer

# Sends of one socket being stored at once; past this the socket's next frame
# waits (no unbounded work per socket; the rate limit bounds it too).
MAX_SENDS_IN_FLIGHT = 32
# The frames stored through the batched write path (chat/sends.py), pipelined alike.
STORED_FRAMES = frozenset({"send", "edit", "delete", "react"})


class ChatConsumer(TetherConsumer):
    """`/ws/chat/`: instant messaging (PROTOCOL 6)."""

    endpoint = "chat"
    handlers = {**BASE_HANDLERS, **chat_handlers.CHAT_HANDLERS}

    _heads: dict[str, int] | None = None
    _sending: set[asyncio.Future[None]] | None = None

    async def dispatch_frame(self, frame: Frame) -> None:
        """Pipelined sends: a `send` joins the node's next batch at once and is answered
        when stored, so the socket's following sends can join the same batch (one at a
        time, a client with several sends in flight got one per batch: docs/benchmarks.md, "Chat",
        throughput at saturation). Sends keep their order (each joins the queue in
        arrival order); any other frame waits until the earlier sends are answered,
        so it sees them stored. PROTOCOL 10's events (`edit`, `delete`, `react`) go
        the same way, in the same batches."""
        pending = self._sending
        if frame.type in STORED_FRAMES:
            if pending is None:
                pending = self._sending = set()
            while len(pending) >= MAX_SENDS_IN_FLIGHT:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.ensure_future(super().dispatch_frame(frame))
            pending.add(task)
            task.add_done_callback(pending.discard)
            return
        if pending:
            await asyncio.wait(pending)
        await super().dispatch_frame(frame)

    async def before_welcome(self) -> None:
        self._heads = await chat_handlers.starting_positions(self)

    async def on_open(self) -> None:
        await chat_handlers.subscribe_all(self, self._heads or {})
        self._heads = None
        await events.presence_changed(self.user.pk)

    async def on_leave(self) -> None:
        await chat_handlers.unsubscribe_all(self)

    async def before_frame(self, frame: Frame) -> None:
        await chat_handlers.before_frame(self, frame)

    async def after_removed(self) -> None:
        await events.presence_changed(self.user.pk)

    async def tether_joined(self, message: dict[str, Any]) -> None:
        """Added to a conversation (on any node): receive it from now on."""
        if self.conn is None or self.conn.closing:
            return
        cid = message["conversation"]
        reprs = await database_sync_to_async(conversations.conversation_reprs)(self.user.pk, [cid])
        if not reprs:
            return  # removed again meanwhile
        # Control messages of a socket run one at a time, in order: a removal after
        # this addition is handled after this, and unsubscribes what this subscribes.
        delivery.rejoined(self.conn, cid)
        if cid not in self.conn.cursors:
            delivery.start(self.conn, cid, reprs[0]["last_seq"])
            await self.runtime.hub.subscribe(events.conversation_group(cid), self.conn)
        await self.send_frame({"type": "joined", "conversation": reprs[0]})

    async def tether_left(self, message: dict[str, Any]) -> None:
        """Removed from a conversation: stop receiving it at once."""
        if self.conn is None or self.conn.closing:
            return
        cid = message["conversation"]
        # Stopped before anything awaits: from here no frame of the conversation goes
        # out on this socket (every delivery path checks the cursor), and a `sync` or
        # an opening that read the memberships earlier does not subscribe it again.
        delivery.stop(self.conn, cid)
        await self.runtime.hub.unsubscribe(events.conversation_group(cid), self.conn)
        await self.send_frame({"type": "left", "conversation": cid})
