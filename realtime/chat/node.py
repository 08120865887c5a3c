"""Chat's work on every node (a `NodePart`, added by realtime/apps.py): the hub's chat
handlers, the node's batches of sends, typing's once-a-second memory, the head
check, and presence re-evaluated for users whose sockets went without a cleanup."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from realtime.chat import events, fanout
from realtime.chat.send_queue import SendQueue

if TYPE_CHECKING:
    from realtime.node.runtime import NodeRuntime

# How long a passed-on `typing` is remembered (it is passed on once a second at most).
TYPING_MEMORY_SECONDS = 5.0


class ChatNode:
    """One per process; its state starts afresh with each start of the node."""

    def __init__(self) -> None:
        self.sends = SendQueue()
        # (user id, conversation) → when a `typing` was last passed on (PROTOCOL 6).
        self.typing_seen: dict[tuple[int, str], float] = {}

    def start(self, runtime: NodeRuntime) -> None:
        self.sends = SendQueue()
        self.typing_seen = {}
        fanout.install(runtime.hub, lambda: list(runtime.connections.values()))

    async def maintain(self, runtime: NodeRuntime) -> None:
        await fanout.check_heads(runtime.hub)
        cutoff = time.monotonic() - TYPING_MEMORY_SECONDS
        self.typing_seen = {k: t for k, t in self.typing_seen.items() if t > cutoff}

    async def recheck_users(self, user_ids: Iterable[int]) -> None:
        for user_id in user_ids:
            await events.presence_changed(user_id)

    def sizes(self) -> dict[str, int]:
        return {"typing_seen": len(self.typing_seen)}


chat_node = ChatNode()
