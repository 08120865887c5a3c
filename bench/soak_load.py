"""The soak's mixed load (`bench/soak.py`): what users and operators do all day.

- REST churn: workers that sign up and take a token (every few rounds; a
  password hash is a third of a second of CPU), then read `me`, create a group,
  post messages, list conversations and messages.
- Chat clients: one socket each, sending about once a second, answering the
  heartbeat, and reconnecting now and then with `sync`; every `message` frame is
  recorded, so the end can tell a duplicate or a missing message per client.
- Topic subscribers that reconnect with `since`, and one publisher over REST.
- Operators listing live connections and stats.

Every request loop stops at the deadline it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

PASSWORD = "Soak-passw0rd-long"


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One blocking request: (status, decoded JSON or None)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def _ws(url: str) -> str:
    return "ws" + url[len("http") :]


async def ahttp(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    return await asyncio.to_thread(http, method, url, body, token)


@dataclass
class Tally:
    """What the load saw: REST answers by status, messages acknowledged, problems."""

    statuses: Counter = field(default_factory=Counter)
    # (conversation, seq) → client id of every message acknowledged (REST or `ack`).
    acked: dict[tuple[str, int], str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    reconnects: int = 0
    sends: int = 0
    publications: int = 0
    pubs_received: int = 0
    recoveries: Counter = field(default_factory=Counter)

    def status(self, what: str, status: int, expected: tuple[int, ...]) -> bool:
        self.statuses[status] += 1
        if status not in expected:
            self.problem(f"{what}: HTTP {status}")
            return False
        return True

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)


async def keep_reconnecting(
    name: str,
    urls: list[str],
    tally: Tally,
    deadline: float,
    session: tuple[float, float],
    one: Callable[[str, float], Awaitable[None]],
) -> None:
    """Sessions on the nodes in turn, each of a random length within `session`
    seconds, until the deadline; `one(url, until)` runs one session."""
    turn = 0
    while time.monotonic() < deadline:
        url = urls[turn % len(urls)]
        turn += 1
        until = min(deadline, time.monotonic() + random.uniform(*session))
        try:
            await one(url, until)
        except (OSError, ConnectionClosed, InvalidStatus, TimeoutError) as exc:
            tally.problem(f"{name}: socket failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1)  # the node refused: try again a moment later
        tally.reconnects += 1


async def rest_churn(urls: list[str], tally: Tally, deadline: float, signup_every: int) -> None:
    """One worker: sign-ups, tokens, groups, messages and lists, round after round."""
    people: list[tuple[int, str]] = []
    rounds = 0
    while time.monotonic() < deadline:
        base = urls[rounds % len(urls)]
        if rounds % signup_every == 0 or not people:
            name = f"churn_{secrets.token_hex(5)}"
            status, body = await ahttp(
                "POST", base + "/api/auth/register/", {"username": name, "password": PASSWORD}
            )
            if tally.status("register", status, (201,)):
                user_id = body["id"]
                status, body = await ahttp(
                    "POST", base + "/api/auth/token/", {"username": name, "password": PASSWORD}
                )
                if tally.status("token", status, (200,)):
                    people.append((user_id, body["token"]))
            if not people:
                await asyncio.sleep(0.5)  # the node refused; the tally says why
                rounds += 1
                continue
        user_id, token = random.choice(people)
        status, _ = await ahttp("GET", base + "/api/me/", token=token)
        tally.status("me", status, (200,))
        others = [uid for uid, _ in people if uid != user_id][:3]
        status, conv = await ahttp(
            "POST",
            base + "/api/conversations/",
            {"kind": "group", "title": f"soak {rounds}", "members": others},
            token=token,
        )
        if tally.status("create group", status, (201,)):
            for _ in range(3):
                client_id = secrets.token_hex(8)
                status, msg = await ahttp(
                    "POST",
                    f"{base}/api/conversations/{conv['id']}/messages/",
                    {"id": client_id, "body": "rest"},
                    token=token,
                )
                if tally.status("post message", status, (201,)):
                    tally.acked[(conv["id"], msg["seq"])] = client_id
            status, _ = await ahttp(
                "GET", f"{base}/api/conversations/{conv['id']}/messages/?limit=50", token=token
            )
            tally.status("list messages", status, (200,))
        status, _ = await ahttp("GET", base + "/api/conversations/", token=token)
        tally.status("list conversations", status, (200,))
        rounds += 1


@dataclass
class ChatClient:
    """One logical chat client: a socket at a time, across reconnects."""

    name: str
    token: str
    urls: list[str]
    conversations: list[str]
    # conversation → every seq received, in arrival order (duplicates kept).
    received: dict[str, list[int]] = field(default_factory=dict)
    unacked: dict[str, str] = field(default_factory=dict)  # client id → conversation
    reorders: int = 0
    all_acked: asyncio.Event = field(default_factory=asyncio.Event)

    def position(self, cid: str) -> int:
        """The highest seq below which nothing is missing."""
        seen = set(self.received.get(cid, ()))
        at = 0
        while at + 1 in seen:
            at += 1
        return at

    async def run(
        self, tally: Tally, deadline: float, session: tuple[float, float], rate: float
    ) -> None:
        async def one(url: str, until: float) -> None:
            await self._session(url, tally, until, rate)

        await keep_reconnecting(self.name, self.urls, tally, deadline, session, one)

    async def finish(self, tally: Tally, within: float = 30) -> None:
        """A last resume: everything this client misses, then a clean close."""
        url = self.urls[0]
        async with connect(_ws(url) + "/ws/chat/", **self._connect_args()) as ws:
            await self._resume(ws, tally, within)

    def _connect_args(self) -> dict[str, Any]:
        return {
            "additional_headers": {"Authorization": f"Bearer {self.token}"},
            "max_size": None,
            "ping_interval": None,
            "open_timeout": 20,
        }

    async def _resume(self, ws: Any, tally: Tally, within: float) -> None:
        """`sync` as the first frame, reading until `synced`."""
        welcome = json.loads(await asyncio.wait_for(ws.recv(), within))
        if welcome.get("type") != "welcome":
            raise ConnectionError(f"no welcome: {welcome}")
        positions = {cid: self.position(cid) for cid in self.conversations}
        sync_id = secrets.token_hex(4)
        await ws.send(json.dumps({"type": "sync", "id": sync_id, "positions": positions}))
        last: dict[str, int] = {}
        end = time.monotonic() + within
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), max(end - time.monotonic(), 0)))
            self._on_frame(frame, last, tally)
            if frame.get("type") == "ping":
                await ws.send('{"type":"pong"}')
            if frame.get("type") == "synced" and frame.get("id") == sync_id:
                for cid, state in frame["conversations"].items():
                    if not state.get("complete", True):
                        tally.problem(f"{self.name}: sync of {cid} incomplete")
                break
        return None

    def _on_frame(self, frame: dict[str, Any], last: dict[str, int], tally: Tally) -> None:
        kind = frame.get("type")
        if kind == "message":
            cid, seq = frame["conversation"], frame["seq"]
            self.received.setdefault(cid, []).append(seq)
            if seq <= last.get(cid, 0):
                self.reorders += 1
            last[cid] = seq
        elif kind == "ack":
            self.unacked.pop(frame["id"], None)
            if not self.unacked:
                self.all_acked.set()
            tally.acked[(frame["conversation"], frame["seq"])] = frame["id"]
        elif kind == "error":
            tally.problem(f"{self.name}: error frame {frame}")

    async def _session(self, url: str, tally: Tally, until: float, rate: float) -> None:
        async with connect(_ws(url) + "/ws/chat/", **self._connect_args()) as ws:
            await self._resume(ws, tally, 30)
            last: dict[str, int] = {}
            for client_id, cid in list(self.unacked.items()):  # same ids: never twice
                await ws.send(
                    json.dumps(
                        {"type": "send", "id": client_id, "conversation": cid, "body": "again"}
                    )
                )

            async def reader() -> None:
                async for raw in ws:
                    frame = json.loads(raw)
                    self._on_frame(frame, last, tally)
                    if frame.get("type") == "ping":
                        await ws.send('{"type":"pong"}')

            reading = asyncio.create_task(reader())
            try:
                while time.monotonic() < until and not reading.done():
                    await asyncio.sleep(random.expovariate(rate))
                    cid = random.choice(self.conversations)
                    client_id = secrets.token_hex(8)
                    self.unacked[client_id] = cid
                    self.all_acked.clear()
                    tally.sends += 1
                    await ws.send(
                        json.dumps(
                            {"type": "send", "id": client_id, "conversation": cid, "body": "hi"}
                        )
                    )
                # Let the last acks arrive before leaving: a client closes when idle.
                if self.unacked and not reading.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.all_acked.wait(), 5)
            finally:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)


@dataclass
class Subscriber:
    """One topic subscriber that reconnects with `since`."""

    token: str
    urls: list[str]
    topic: str
    offset: int | None = None
    epoch: str | None = None
    gaps: int = 0
    repeats: int = 0

    async def run(self, tally: Tally, deadline: float, session: tuple[float, float]) -> None:
        async def one(url: str, until: float) -> None:
            await self._session(url, tally, until)

        await keep_reconnecting(
            f"subscriber {self.topic}", self.urls, tally, deadline, session, one
        )

    def _take(self, offset: int, epoch: str, tally: Tally) -> None:
        if self.offset is not None and epoch == self.epoch:
            if offset <= self.offset:
                self.repeats += 1
                return
            if offset > self.offset + 1:
                self.gaps += 1
        self.offset, self.epoch = offset, epoch
        tally.pubs_received += 1

    async def _session(self, url: str, tally: Tally, until: float) -> None:
        args = {
            "additional_headers": {"Authorization": f"Bearer {self.token}"},
            "ping_interval": None,
            "open_timeout": 20,
        }
        async with connect(_ws(url) + "/ws/stream/", **args) as ws:
            await asyncio.wait_for(ws.recv(), 20)  # welcome
            frame: dict[str, Any] = {"type": "subscribe", "id": "s", "topic": self.topic}
            if self.offset is not None:
                frame["since"] = {"offset": self.offset, "epoch": self.epoch}
            await ws.send(json.dumps(frame))
            while time.monotonic() < until:
                try:
                    raw = await asyncio.wait_for(ws.recv(), max(until - time.monotonic(), 0.01))
                except TimeoutError:
                    break
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "subscribed":
                    tally.recoveries[bool(frame["recovered"])] += 1
                    if frame["epoch"] != self.epoch:
                        self.offset, self.epoch = frame["offset"], frame["epoch"]
                    for pub in frame["publications"]:
                        self._take(pub["offset"], frame["epoch"], tally)
                    self.offset = max(self.offset or 0, frame["offset"])
                elif kind == "pub":
                    self._take(frame["offset"], frame["epoch"], tally)
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
                elif kind == "error":
                    tally.problem(f"subscriber {self.topic}: {frame}")


async def publisher(
    urls: list[str], token: str, topics: list[str], tally: Tally, deadline: float, rate: float
) -> None:
    n = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(1 / rate)
        status, _ = await ahttp(
            "POST",
            f"{urls[n % len(urls)]}/api/topics/{topics[n % len(topics)]}/publish/",
            {"data": {"n": n}},
            token=token,
        )
        if tally.status("publish", status, (201,)):
            tally.publications += 1
        n += 1


async def operators(urls: list[str], token: str, tally: Tally, deadline: float) -> None:
    n = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(2)
        base = urls[n % len(urls)]
        status, _ = await ahttp("GET", base + "/api/admin/connections/?idle_gt=0", token=token)
        tally.status("admin connections", status, (200,))
        status, _ = await ahttp("GET", base + "/api/stats/", token=token)
        tally.status("stats", status, (200,))
        n += 1
