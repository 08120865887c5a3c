"""The chat client for `/ws/chat/` (PROTOCOL 6): resumes with `sync`, hands the
application each conversation's messages once and in `seq` order (gaps refilled with
`history`), and keeps an outbox of unacknowledged sends that are sent again, with
the same ids, after every reconnect until the server acknowledges them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .client import SocketClient
from .errors import Disconnected, SendFailed, TetherError

SEND_ACK_TIMEOUT = 15.0
HISTORY_PAGE = 100
# Out-of-order messages held while a gap is refilled; beyond this we drop and rely on
# the refill, so a broken server cannot grow our memory without end.
MAX_HELD_PER_CONVERSATION = 2000


def random_id(prefix: str = "c") -> str:
    """A client id usable as an idempotency key (1 to 64 characters)."""
    return prefix + secrets.token_hex(12)


@dataclass
class Outgoing:
    """One unacknowledged send: resent with the same `id` until acknowledged."""

    id: str
    conversation: str
    body: str
    extra: dict[str, Any] = field(default_factory=dict)
    # The frame it goes out as: "send", or PROTOCOL 10's "edit", "delete", "react".
    type: str = "send"
    failed: bool = False
    generation: int = 0  # the connection it last went out on
    timer: asyncio.TimerHandle | None = None
    waiters: list[asyncio.Future] = field(default_factory=list)

    def frame(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "id": self.id, "conversation": self.conversation}
        if self.type in ("send", "edit"):
            out["body"] = self.body
        out.update(self.extra)
        return out


def apply_event(messages: dict[str, dict[str, Any]], frame: Mapping[str, Any]) -> dict | None:
    """Apply a conversation event (a `message` frame, PROTOCOL 10) to local messages
    (message_id → message). A `kind: "message"` frame carries its message's state
    (current when replayed) and replaces it; an edit replaces its target's body and
    `edited_at`; a delete marks it deleted and empties it; a reaction adds or removes
    its sender in `reactions[emoji]`. The message changed, or None (unknown target)."""
    kind = frame.get("kind", "message")
    if kind == "message":
        message = {k: v for k, v in frame.items() if k != "type"}
        messages[frame["message_id"]] = message
        return message
    target = messages.get(frame.get("target") or "")
    if target is None:
        return None
    if kind == "edit":
        if not target.get("deleted"):
            target["body"], target["edited_at"] = frame["body"], frame["ts"]
    elif kind == "delete":
        target.update(deleted=True, body="", attachments=[])
    elif kind == "reaction":
        uid = (frame.get("sender") or {}).get("id")
        reactions = dict(target.get("reactions") or {})
        before = list(reactions.get(frame["emoji"], []))
        if frame.get("on"):
            users = before if uid in before else [*before, uid]
        else:
            users = [u for u in before if u != uid]
        if users:
            reactions[frame["emoji"]] = users
        else:
            reactions.pop(frame["emoji"], None)
        target["reactions"] = reactions
    return target


class ChatClient(SocketClient):
    """`/ws/chat/`. Events: `state`, `welcome`, `disconnect`, `auth_required`, `pong`,
    `error`, `refreshed`, `refresh_failed`, and `message` (once per `seq`, in order),
    `ack`, `send_failed`, `joined`, `left`, `receipt`, `typing`, `presence`, `synced`.

    `positions` (`{conversation: seq}`) are the messages the application already
    holds: the first `sync` starts after them.
    """

    PATH = "/ws/chat/"

    def __init__(
        self,
        url: str | Iterable[str],
        *,
        positions: Mapping[str, int] | None = None,
        ack_timeout: float = SEND_ACK_TIMEOUT,
        **options: Any,
    ) -> None:
        super().__init__(url if isinstance(url, str) else list(url), **options)
        self.positions: dict[str, int] = dict(positions or {})
        self.outbox: dict[str, Outgoing] = {}
        self.ack_timeout = ack_timeout
        self.user: dict[str, Any] | None = None
        self._held: dict[str, dict[int, dict[str, Any]]] = {}
        self._refilling: set[str] = set()
        self.conn.resume_gate = True
        self.conn.on_welcome.append(self._resume)
        self.conn.on_ready.append(self._resend)
        self.hub.on("disconnect", self._on_disconnect)

    # --- resume -------------------------------------------------------------------

    async def _resume(self, welcome: dict[str, Any]) -> None:
        self.user = welcome.get("user")
        # `sync` first: the server holds live messages until it arrives.
        frame = {"type": "sync", "positions": dict(self.positions)}
        try:
            reply = await self.conn.start_request(frame, on_reply=self._synced)
        except Disconnected:
            return
        self.conn.spawn(self._sync_answered(reply), per_connection=True)

    async def _sync_answered(self, reply: asyncio.Future) -> None:
        try:
            await asyncio.wait_for(reply, self.conn.request_timeout)
        except Disconnected:
            return
        except (TetherError, TimeoutError) as failure:
            # Live delivery goes on without it; the application hears why.
            self.hub.emit("error", {"code": getattr(failure, "code", "timeout"), "sync": True})
            self.conn.mark_resumed()

    async def _resend(self, welcome: dict[str, Any]) -> None:
        # After the sync went out: same ids, so the server stores each once.
        generation = self.conn.generation
        for entry in list(self.outbox.values()):
            if not entry.failed and entry.generation != generation:
                await self._transmit(entry)

    def _synced(self, reply: dict[str, Any]) -> None:
        for conversation, info in (reply.get("conversations") or {}).items():
            self._refilling.discard(conversation)
            if not info.get("complete", True):
                self._start_refill(conversation)
            else:
                self._drain_held(conversation)
        self.conn.mark_resumed()
        self.hub.emit("synced", reply)

    def _on_disconnect(self, _: Any) -> None:
        for entry in self.outbox.values():
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
        self._refilling.clear()

    # --- incoming -----------------------------------------------------------------

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "message":
            self._on_message(frame)
        elif kind == "ack":
            entry = self.outbox.get(frame.get("id") or "")
            if entry is not None:
                self._settle(entry, frame)
        elif kind == "error":
            self._on_error(frame)
        elif kind == "joined":
            conversation = frame.get("conversation") or {}
            self.positions.setdefault(conversation["id"], conversation.get("last_seq") or 0)
            self.hub.emit("joined", conversation)
        elif kind == "left":
            self.positions.pop(frame["conversation"], None)
            self._held.pop(frame["conversation"], None)
            self.hub.emit("left", {"conversation": frame["conversation"]})
        elif kind in ("receipt", "typing", "presence"):
            self.hub.emit(kind, frame)

    def _on_message(self, frame: dict[str, Any]) -> None:
        conversation = frame["conversation"]
        seq = frame["seq"]
        last = self.positions.get(conversation)
        if last is None:
            # A conversation we were not told about (joined elsewhere): start here.
            last = self.positions[conversation] = seq - 1
        if seq <= last:
            return  # already delivered (a replay)
        if seq > last + 1:
            held = self._held.setdefault(conversation, {})
            if len(held) < MAX_HELD_PER_CONVERSATION:
                held[seq] = frame
            # The store fills the gap; a `sync` on this socket would not resend what
            # the server already sent it.
            self._start_refill(conversation)
            return
        self._deliver(frame)
        self._drain_held(conversation)

    def _deliver(self, frame: dict[str, Any]) -> None:
        self.positions[frame["conversation"]] = frame["seq"]
        entry = self.outbox.get(frame.get("client_id") or "")
        sender = frame.get("sender") or {}
        if entry is not None and self.user is not None and sender.get("id") == self.user["id"]:
            # Our own message came back before its ack (e.g. replayed by a sync).
            self._settle(entry, frame)
        self.hub.emit("message", frame)

    def _drain_held(self, conversation: str) -> None:
        held = self._held.get(conversation)
        if not held:
            return
        last = self.positions.get(conversation, 0)
        for seq in [s for s in held if s <= last]:
            del held[seq]
        while last + 1 in held:
            self._deliver(held.pop(last + 1))
            last += 1
        if not held:
            self._held.pop(conversation, None)
        else:
            self._start_refill(conversation)

    def _start_refill(self, conversation: str) -> None:
        if conversation not in self._refilling and self.conn.ready:
            self._refilling.add(conversation)
            self.conn.spawn(self._refill(conversation), per_connection=True)

    async def _refill(self, conversation: str) -> None:
        try:
            while True:
                after = self.positions.get(conversation, 0)
                page = await self.history(conversation, after=after, limit=HISTORY_PAGE)
                for message in page["messages"]:
                    if message["seq"] == self.positions.get(conversation, 0) + 1:
                        self._deliver({"type": "message", **message})
                if not page.get("has_more") or not page["messages"]:
                    break
        except TetherError:
            return
        finally:
            self._refilling.discard(conversation)
        self._drain_held(conversation)

    # --- the outbox -----------------------------------------------------------------

    async def send(self, conversation: str, body: str, id: str | None = None, **extra: Any) -> str:
        """Queue a message; its client id. It goes out now when connected, else after
        the next reconnect; `ack` or `send_failed` follows. `extra` fields (PROTOCOL
        10's `reply_to`, `attachments`: with attachments the body may be empty) are
        sent as they are."""
        entry = Outgoing(id or random_id(), conversation, body, extra)
        self.outbox[entry.id] = entry
        if self.conn.ready:
            await self._transmit(entry)
        return entry.id

    async def _queue(
        self, type_: str, conversation: str, body: str, id: str | None, extra: dict[str, Any]
    ) -> str:
        entry = Outgoing(id or random_id(), conversation, body, extra, type=type_)
        self.outbox[entry.id] = entry
        if self.conn.ready:
            await self._transmit(entry)
        return entry.id

    async def edit(
        self, conversation: str, message_id: str, body: str, id: str | None = None
    ) -> str:
        """Queue an edit of one of the user's messages (PROTOCOL 10); its client id.
        Resent and acknowledged like a send (`ack`, `send_failed`)."""
        return await self._queue("edit", conversation, body, id, {"message_id": message_id})

    async def delete(self, conversation: str, message_id: str, id: str | None = None) -> str:
        """Queue the deletion of a message (its sender, the conversation's creator or
        staff); deleting twice is answered with the first delete's ack."""
        return await self._queue("delete", conversation, "", id, {"message_id": message_id})

    async def react(
        self,
        conversation: str,
        message_id: str,
        emoji: str,
        on: bool = True,
        id: str | None = None,
    ) -> str:
        """Queue a reaction: `on` adds the user's `emoji` on the message, False removes it."""
        extra = {"message_id": message_id, "emoji": emoji, "on": on}
        return await self._queue("react", conversation, "", id, extra)

    async def ack(self, id: str, timeout: float | None = 30) -> dict[str, Any]:
        """Wait for the ack of a queued send; raises SendFailed if it fails meanwhile
        (it stays in the outbox: `retry()` or `discard()` it)."""
        entry = self.outbox.get(id)
        if entry is None:
            raise KeyError(f"{id} is not in the outbox (acknowledged or discarded)")
        return await self._wait(entry, self._waiter(entry), timeout)

    async def send_and_wait(
        self,
        conversation: str,
        body: str,
        id: str | None = None,
        timeout: float | None = 30,
        **extra: Any,
    ) -> dict[str, Any]:
        """`send` and wait for its ack (across reconnects)."""
        entry = Outgoing(id or random_id(), conversation, body, extra)
        self.outbox[entry.id] = entry
        future = self._waiter(entry)
        if self.conn.ready:
            await self._transmit(entry)
        return await self._wait(entry, future, timeout)

    def _waiter(self, entry: Outgoing) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        entry.waiters.append(future)
        return future

    async def _wait(
        self, entry: Outgoing, future: asyncio.Future, timeout: float | None
    ) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            with contextlib.suppress(ValueError):
                entry.waiters.remove(future)

    async def retry(self, id: str) -> bool:
        """Send a failed message again with the same id (the server stores it once)."""
        entry = self.outbox.get(id)
        if entry is None:
            return False
        entry.failed = False
        if self.conn.ready:
            await self._transmit(entry)
        return True

    def discard(self, id: str) -> bool:
        """Forget a queued or failed message (it may still have reached the server)."""
        entry = self.outbox.pop(id, None)
        if entry is None:
            return False
        if entry.timer is not None:
            entry.timer.cancel()
        for waiter in entry.waiters:
            if not waiter.done():
                waiter.set_exception(SendFailed(detail="discarded"))
        return True

    async def _transmit(self, entry: Outgoing) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.generation = self.conn.generation
        if not await self.conn.send_frame(entry.frame()):
            return  # the next welcome sends it again
        loop = asyncio.get_running_loop()
        entry.timer = loop.call_later(
            self.ack_timeout, self._fail, entry, {"code": "timeout", "message": "no ack"}
        )

    def _settle(self, entry: Outgoing, info: Mapping[str, Any]) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        self.outbox.pop(entry.id, None)
        ack = {
            "id": entry.id,
            "conversation": entry.conversation,
            "seq": info.get("seq"),
            "message_id": info.get("message_id"),
            "ts": info.get("ts"),
            "duplicate": bool(info.get("duplicate")),
        }
        for waiter in entry.waiters:
            if not waiter.done():
                waiter.set_result(ack)
        self.hub.emit("ack", ack)

    def _on_error(self, frame: dict[str, Any]) -> None:
        entry = self.outbox.get(frame.get("id") or "")
        if entry is None:
            return
        if frame.get("code") == "rate_limited":
            # Not processed: the same id later is safe.
            if entry.timer is not None:
                entry.timer.cancel()
            delay = (frame.get("retry_after") or 500) / 1000
            entry.timer = asyncio.get_running_loop().call_later(
                delay, lambda: self.conn.spawn(self._retransmit(entry), per_connection=True)
            )
            return
        self._fail(entry, frame)

    async def _retransmit(self, entry: Outgoing) -> None:
        if self.outbox.get(entry.id) is entry and self.conn.ready:
            await self._transmit(entry)

    def _fail(self, entry: Outgoing, frame: Mapping[str, Any]) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.failed = True
        detail = {
            "id": entry.id,
            "conversation": entry.conversation,
            "code": frame.get("code"),
            "message": frame.get("message"),
        }
        for waiter in entry.waiters:
            if not waiter.done():
                waiter.set_exception(SendFailed(str(frame.get("code")), str(detail["message"])))
        self.hub.emit("send_failed", detail)

    # --- queries and small frames -----------------------------------------------------

    def follow(self, conversation: str, seq: int = 0) -> None:
        """Track a conversation from `seq` (e.g. one just created over REST)."""
        if self.positions.get(conversation, -1) < seq:
            self.positions[conversation] = seq

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """`{messages, has_more}`, messages in increasing `seq`."""
        frame: dict[str, Any] = {"type": "history", "conversation": conversation, "limit": limit}
        if before is not None:
            frame["before"] = before
        if after is not None:
            frame["after"] = after
        return (await self.conn.request(frame))["data"]

    async def conversations(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        """`{conversations, has_more}` with `last_seq`, `read_seq` and `unread` for
        each, highest `last_seq` first; `limit` / `offset` page it."""
        frame: dict[str, Any] = {"type": "conversations"}
        if limit is not None:
            frame["limit"] = limit
        if offset is not None:
            frame["offset"] = offset
        return (await self.conn.request(frame))["data"]

    async def presence(self, users: Iterable[int]) -> dict[str, str]:
        """`{"<user id>": "online" | "offline"}`."""
        reply = await self.conn.request({"type": "presence.query", "users": list(users)})
        return reply["data"]

    async def mark_read(self, conversation: str, seq: int) -> bool:
        """Store the read position (other members get a `receipt`); False if offline."""
        return await self.conn.send_frame(
            {"type": "read", "conversation": conversation, "seq": seq}
        )

    async def typing(self, conversation: str) -> bool:
        return await self.conn.send_frame({"type": "typing", "conversation": conversation})
