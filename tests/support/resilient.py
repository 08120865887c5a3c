"""Clients that keep going through faults, for the live fault tests (a Redis master
killed, nodes restarted behind nginx): a sender that resends each message until it
is acknowledged, a member that resumes with `sync`, a subscriber that resumes with
`since`. Where each reconnects is the test's: `connect` gives a fresh socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.support.names import unique
from tests.support.wsclient import ConnectionClosedByServer, WsClient

# What a fault looks like to a client: its socket closed or refused, no answer.
ERRORS = (ConnectionClosedByServer, ConnectionClosed, InvalidHandshake, OSError, TimeoutError)

Connect = Callable[[], Awaitable[WsClient]]
OnDrop = Callable[[BaseException], Awaitable[None]]


async def _dropped(error: BaseException, on_drop: OnDrop | None) -> None:
    if on_drop is not None:
        await on_drop(error)


@dataclass
class Sender:
    """Sends continuously, each message until acknowledged (the same id when sent again)."""

    connect: Connect
    conversation: str
    name: str
    interval: float
    ack_timeout: float = 5.0
    on_drop: OnDrop | None = None
    acked: list[tuple[int, str, float]] = field(default_factory=list)  # seq, body, when
    resent: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        ws = await self.connect()
        n = 0
        while not stop.is_set():
            client_id, body = unique("m"), f"{self.name} {n}"
            while True:
                try:
                    ack = await self._send(ws, client_id, body)
                    if ack is not None:
                        break
                except ERRORS as error:
                    await ws.close()
                    await _dropped(error, self.on_drop)
                    ws = await self.connect()
                self.resent += 1
            self.acked.append((ack["seq"], body, time.monotonic()))
            n += 1
            await asyncio.sleep(self.interval)
        await ws.close()

    async def _send(self, ws: WsClient, client_id: str, body: str) -> dict[str, Any] | None:
        """The ack, or None when the node answered an error for this id (try again)."""
        frame = {"type": "send", "id": client_id, "conversation": self.conversation, "body": body}
        await ws.send(frame)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        while True:
            got = await ws.recv(max(0.01, deadline - loop.time()))
            if got.get("id") != client_id:
                continue  # members' messages, pings: not checked on senders' sockets
            if got["type"] == "ack":
                return got
            if got["type"] == "error":
                await asyncio.sleep(0.1)  # the node says it cannot now: again shortly
                return None


@dataclass
class Member:
    """One member's logical socket: reads the conversation; after a drop reconnects and
    resumes with `sync` from the last seq it holds."""

    connect: Connect
    conversation: str
    name: str
    on_drop: OnDrop | None = None
    seqs: list[int] = field(default_factory=list)
    bodies: dict[int, str] = field(default_factory=dict)
    received: dict[int, float] = field(default_factory=dict)  # seq → when it arrived
    resumes: int = 0

    async def run(self, done: Callable[[int], bool]) -> None:
        while True:
            ws = await self.connect()
            last = self.seqs[-1] if self.seqs else 0
            try:
                await ws.send(
                    {"type": "sync", "id": unique("s"), "positions": {self.conversation: last}}
                )
                while not done(self.seqs[-1] if self.seqs else 0):
                    with contextlib.suppress(TimeoutError):
                        self._take(await ws.recv(0.5))
                await ws.close()
                return
            except ERRORS as error:
                self.resumes += 1
                await ws.close()
                await _dropped(error, self.on_drop)

    def _take(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "message" and frame["conversation"] == self.conversation:
            self.seqs.append(frame["seq"])
            self.bodies[frame["seq"]] = frame["body"]
            self.received.setdefault(frame["seq"], time.monotonic())


@dataclass
class Subscriber:
    """Follows a topic; after a drop resubscribes with `since`, keeping each answer."""

    connect: Connect  # to /ws/stream/
    topic: str
    answer_timeout: float = 5.0
    on_drop: OnDrop | None = None
    seen: list[tuple[str, int, int]] = field(default_factory=list)  # epoch, offset, data n
    answers: list[dict[str, Any]] = field(default_factory=list)  # `since` and the reply

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            ws = await self.connect()
            try:
                since = (
                    {"epoch": self.seen[-1][0], "offset": self.seen[-1][1]} if self.seen else None
                )
                frame: dict[str, Any] = {
                    "type": "subscribe",
                    "id": unique("s"),
                    "topic": self.topic,
                }
                if since:
                    frame["since"] = since
                await ws.send(frame)
                reply = await ws.expect("subscribed", timeout=self.answer_timeout)
                self.answers.append({"since": since, **reply})
                for pub in reply["publications"]:
                    self.seen.append((reply["epoch"], pub["offset"], pub["data"]["n"]))
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        got = await ws.recv(0.5)
                        if got["type"] == "pub":
                            self.seen.append((got["epoch"], got["offset"], got["data"]["n"]))
                await ws.close()
            except ERRORS as error:
                await ws.close()
                await _dropped(error, self.on_drop)


def acked_and_stored(
    sql: Callable[..., list[tuple]], cid: str, senders: list[Sender]
) -> tuple[dict[int, str], dict[int, str]]:
    """After a fault test: (seq → body acknowledged, seq → body stored), having checked
    that no seq was acknowledged twice and the stored seqs have no gap. How the two
    must relate is the test's (a fault may leave rows whose ack was lost)."""
    acked = {seq: body for s in senders for seq, body, _ in s.acked}
    assert len(acked) == sum(len(s.acked) for s in senders), "one seq acknowledged twice"
    stored = dict(
        sql("SELECT seq, body FROM realtime_message WHERE conversation_id = %s ORDER BY seq", cid)
    )
    assert list(stored) == list(range(1, len(stored) + 1)), "stored seqs have a gap"
    return acked, stored


async def each_member_got_all(
    members: list[Member], reading: list[asyncio.Task[Any]], stored: dict[int, str], timeout: float
) -> None:
    """Every member, once its reader is done, holds every stored message once, in order."""
    await asyncio.wait_for(asyncio.gather(*reading), timeout)
    for member in members:
        assert member.seqs == list(range(1, max(stored) + 1)), (
            f"{member.name}: not each message once in order (resumed {member.resumes} times)"
        )
        assert member.bodies == stored
