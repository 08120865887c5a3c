"""The topic client for `/ws/stream/` (PROTOCOL 7): subscribes, subscribes again after
a reconnect with `since: {offset, epoch}` of the last publication seen, and hands the
application each publication once, in increasing `offset`."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .client import SocketClient
from .credentials import Provider, call
from .errors import Disconnected, TetherError

TopicTokens = Callable[[str], str | Awaitable[str | None] | None]


@dataclass
class Topic:
    """Where a subscription stands: persist `offset` and `epoch` to resume later."""

    topic: str
    offset: int | None = None
    epoch: str | None = None
    active: bool = False
    token: str | Provider | None = None


class StreamClient(SocketClient):
    """`/ws/stream/`. Events: those of every client (`state`, `welcome`, …) plus
    `subscribed` (the reply and `resumed`: whether `since` was sent; `recovered`
    false after a resume means the gap is lost: rebuild from your own data), `pub`,
    `unsubscribed` (with `reason` when the server ended it), `subscribe_failed`."""

    PATH = "/ws/stream/"

    def __init__(
        self,
        url: str | Iterable[str],
        *,
        get_subscription_token: TopicTokens | None = None,
        **options: Any,
    ) -> None:
        """`get_subscription_token(topic)` (sync or async) gives a subscription token
        for a topic, or None for one that needs none; asked before every subscribe
        (after each reconnect too) of a topic subscribed without a `token` of its own."""
        super().__init__(url if isinstance(url, str) else list(url), **options)
        self.get_subscription_token = get_subscription_token
        self.topics: dict[str, Topic] = {}
        self.conn.on_ready.append(self._resubscribe_all)

    async def subscribe(
        self,
        topic: str,
        since: dict[str, Any] | None = None,
        token: str | Provider | None = None,
    ) -> dict[str, Any] | None:
        """Follow `topic`, optionally from a known `{offset, epoch}`. `token` is a
        subscription token, or a callable that returns a fresh one (called again on
        every reconnect). Connected: the `subscribed` reply (a refusal raises its
        typed error and forgets the topic); otherwise None, and it is subscribed
        after the next connection."""
        entry = self.topics.get(topic) or Topic(topic)
        if since:
            entry.offset, entry.epoch = since.get("offset"), since.get("epoch")
        if token is not None:
            entry.token = token
        self.topics[topic] = entry
        if not self.conn.ready:
            return None
        return await self._subscribe(entry, raise_errors=True)

    async def unsubscribe(self, topic: str) -> bool:
        """Stop following `topic`; True when the server confirmed it."""
        if self.topics.pop(topic, None) is None or not self.conn.ready:
            return False
        try:
            reply = await self.conn.request({"type": "unsubscribe", "topic": topic})
        except TetherError:
            return False
        self.hub.emit("unsubscribed", reply)
        return True

    async def _resubscribe_all(self, welcome: dict[str, Any]) -> None:
        for entry in list(self.topics.values()):
            self.conn.spawn(self._subscribe(entry, raise_errors=False), per_connection=True)

    async def _subscribe(self, entry: Topic, *, raise_errors: bool) -> dict[str, Any] | None:
        frame: dict[str, Any] = {"type": "subscribe", "topic": entry.topic}
        resumed = entry.offset is not None and bool(entry.epoch)
        if resumed:
            frame["since"] = {"offset": entry.offset, "epoch": entry.epoch}
        entry.active = False
        try:
            token = await self._token_for(entry)
            if token is not None:
                frame["token"] = token
            reply = await self.conn.request(
                frame, on_reply=lambda r: self._activate(entry, r, resumed)
            )
        except Disconnected:
            if raise_errors:
                raise
            return None  # the next welcome subscribes again
        except TetherError as refused:
            if self.topics.get(entry.topic) is entry:
                del self.topics[entry.topic]
            self.hub.emit(
                "subscribe_failed",
                {"topic": entry.topic, "code": refused.code, "message": refused.detail},
            )
            if raise_errors:
                raise
            return None
        return reply

    async def _token_for(self, entry: Topic) -> str | None:
        if isinstance(entry.token, str):
            return entry.token
        if entry.token is not None:
            return await call(entry.token)
        if self.get_subscription_token is not None:
            token = self.get_subscription_token(entry.topic)
            return await token if inspect.isawaitable(token) else token
        return None

    def _activate(self, entry: Topic, reply: dict[str, Any], resumed: bool) -> None:
        if self.topics.get(entry.topic) is not entry:
            return  # unsubscribed meanwhile
        if reply.get("epoch") != entry.epoch:
            entry.offset = None
        for publication in reply.get("publications") or []:
            pub = {"type": "pub", "topic": entry.topic, "epoch": reply.get("epoch"), **publication}
            self._deliver(entry, pub)
        # Continue from the reply's offset: what came before was delivered above or,
        # when not recovered, is lost and up to the application to rebuild.
        entry.epoch = reply.get("epoch")
        entry.offset = reply.get("offset")
        entry.active = True
        self.hub.emit("subscribed", {**reply, "resumed": resumed})

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "unsubscribed" and "id" not in frame:
            # The server ended it (the user's rights shrank): subscribing again after a
            # reconnect would only be refused.
            if self.topics.pop(frame.get("topic") or "", None) is not None:
                self.hub.emit("unsubscribed", frame)
            return
        if frame["type"] != "pub":
            return
        entry = self.topics.get(frame.get("topic") or "")
        if entry is not None and entry.active:
            self._deliver(entry, frame)

    def _deliver(self, entry: Topic, pub: dict[str, Any]) -> None:
        offset = pub.get("offset")
        if (
            entry.offset is not None
            and pub.get("epoch") == entry.epoch
            and isinstance(offset, int)
            and offset <= entry.offset
        ):
            return  # seen already
        entry.offset = offset
        entry.epoch = pub.get("epoch")
        self.hub.emit("pub", pub)
