"""PROTOCOL 10 across two daphne nodes on PostgreSQL and Redis: sends, edits, deletes
and reactions flow from several sockets while one node is killed (SIGKILL). Nothing
is lost or doubled, and the state each socket rebuilds by applying its frames is
the database's."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from typing import Any

from tether_client import apply_event
from websockets.exceptions import ConnectionClosed

from tests.support.chat import Person, group, person
from tests.support.live import DaphneNode
from tests.support.names import unique
from tests.support.wsclient import ConnectionClosedByServer, WsClient

LIMITS = {"RATE_LIMIT_PER_SECOND": "1000", "RATE_LIMIT_BURST": "1000"}
ACTIONS = 40  # per socket
ANSWER_TIMEOUT = 15


class Member:
    """One person's socket and what it received: every `message` frame, in order,
    across its reconnects (a resumed socket syncs from the last seq it saw)."""

    def __init__(self, who: Person, cid: str) -> None:
        self.who = who
        self.cid = cid
        self.ws: WsClient | None = None
        self.frames: list[dict[str, Any]] = []
        self.mine: list[str] = []  # message ids of this member's messages
        self.deleted: set[str] = set()
        self.reconnects = 0

    @property
    def last(self) -> int:
        return self.frames[-1]["seq"] if self.frames else 0

    async def open(self, node: DaphneNode) -> None:
        self.ws = await self.who.socket(node)
        await self.ws.send({"type": "sync", "id": unique("y"), "positions": {self.cid: self.last}})
        await self.answer(None, "synced")

    async def answer(
        self, request_id: str | None, kind: str = "ack", upto: int | None = None
    ) -> dict[str, Any]:
        """The reply to `request_id` (or the next `kind` frame), keeping message frames;
        with `upto`, until the message of that seq is kept."""
        assert self.ws is not None
        while upto is None or self.last < upto:
            frame = await self.ws.recv(ANSWER_TIMEOUT)
            if frame["type"] == "message":
                if frame["conversation"] == self.cid:
                    assert frame["seq"] == self.last + 1, (frame["seq"], self.last)
                    self.frames.append(frame)
                continue
            if request_id is None and frame["type"] == kind:
                return frame
            if request_id is not None and frame.get("id") == request_id:
                return frame
        return {}

    async def act(self, frame: dict[str, Any], survivor: DaphneNode) -> dict[str, Any]:
        """Send until answered; a dead node's socket resumes on the survivor and sends
        the same frame again (the same id: stored once)."""
        while True:
            try:
                assert self.ws is not None
                await self.ws.send(frame)
                return await self.answer(frame["id"])
            except (ConnectionClosed, ConnectionClosedByServer, TimeoutError):
                self.reconnects += 1
                await self.open(survivor)

    async def catch_up(self, head: int) -> None:
        while self.last < head:
            try:
                await self.answer(None, "never", head)
            except TimeoutError:
                raise AssertionError(
                    f"{self.who.username}: last {self.last} of {head}, {self.reconnects} resumes"
                ) from None


def choose(rng: random.Random, m: Member, known: list[str], n: int) -> dict[str, Any]:
    key = f"{m.who.username}-{n}"
    base = {"id": key, "conversation": m.cid}
    live = [mid for mid in m.mine if mid not in m.deleted]
    roll = rng.random()
    if roll < 0.2 and live:
        return {**base, "type": "edit", "message_id": rng.choice(live), "body": f"edit {key}"}
    if roll < 0.3 and live:
        return {**base, "type": "delete", "message_id": rng.choice(live)}
    if roll < 0.6 and known:
        target = rng.choice(known)
        emoji = rng.choice(["👍", "🎉", "👀"])
        return {
            **base,
            "type": "react",
            "message_id": target,
            "emoji": emoji,
            "on": rng.random() < 0.7,
        }
    frame = {**base, "type": "send", "body": f"message {key}"}
    if known and rng.random() < 0.3:
        frame["reply_to"] = rng.choice(known)
    return frame


def database_state(stack: Any, cid: str) -> dict[str, dict[str, Any]]:
    rows = stack.sql(
        "SELECT id, body, edited_at, deleted, reactions::text FROM realtime_message "
        "WHERE conversation_id = %s AND kind = 'message'",
        cid,
    )
    return {
        mid: {"body": body, "edited_at": edited, "deleted": deleted, "reactions": json.loads(r)}
        for mid, body, edited, deleted, r in rows
    }


async def test_events_survive_a_killed_node_and_every_socket_rebuilds_the_database(
    production_stack, make_node
) -> None:
    a = make_node(production_stack, "events-a", **LIMITS)
    b = make_node(production_stack, "events-b", **LIMITS)
    people = [person(b) for _ in range(6)]
    cid = group(b, people[0], *people[1:])
    members = [Member(p, cid) for p in people]
    for i, m in enumerate(members):
        await m.open(a if i % 2 == 0 else b)  # half on the node that dies
    known: list[str] = []  # message ids every member may react to or reply to
    frames_sent: dict[str, str] = {}  # key → type
    acked: list[str] = []
    under_way = asyncio.Event()

    async def work(i: int) -> None:
        m, rng = members[i], random.Random(i)
        for n in range(ACTIONS):
            frame = choose(rng, m, known, n)
            frames_sent[frame["id"]] = frame["type"]
            reply = await m.act(frame, b)
            assert reply["type"] == "ack", (frame, reply)
            acked.append(frame["id"])
            if len(acked) >= len(members) * ACTIONS // 3:
                under_way.set()
            if frame["type"] == "send":
                m.mine.append(reply["message_id"])
                known.append(reply["message_id"])
            elif frame["type"] == "delete":
                m.deleted.add(frame["message_id"])

    async def kill_a() -> None:
        # Once the flow is under way (a third of the work acknowledged), SIGKILL.
        await under_way.wait()
        await asyncio.to_thread(a.stop, signal.SIGKILL)

    await asyncio.gather(kill_a(), *(work(i) for i in range(len(members))))
    assert all(m.reconnects >= 1 for m in members[::2])  # every socket on `a` resumed

    head = production_stack.sql("SELECT last_seq FROM realtime_conversation WHERE id = %s", cid)
    head = head[0][0]
    rows = production_stack.sql(
        "SELECT seq, client_id, kind FROM realtime_message WHERE conversation_id = %s ORDER BY seq",
        cid,
    )
    # Nothing lost, nothing doubled: one row per key sent, seqs 1..head.
    assert [seq for seq, _, _ in rows] == list(range(1, head + 1))
    stored = {key: kind for _, key, kind in rows}
    assert len(stored) == len(rows)
    kinds = {"send": "message", "edit": "edit", "delete": "delete", "react": "reaction"}
    # A repeated delete is answered with the first delete: not stored again.
    expected = {k: kinds[t] for k, t in frames_sent.items() if k in stored or t != "delete"}
    assert stored == expected
    assert {t for t in frames_sent.values()} == {"send", "edit", "delete", "react"}
    truth = database_state(production_stack, cid)
    for m in members:
        await m.catch_up(head)
        assert [f["seq"] for f in m.frames] == list(range(1, head + 1))  # each once, in order
        local: dict[str, dict[str, Any]] = {}
        for frame in m.frames:
            apply_event(local, frame)
        rebuilt = {
            mid: {k: msg.get(k) for k in ("body", "edited_at", "deleted", "reactions")}
            for mid, msg in local.items()
        }
        assert rebuilt == truth
        assert m.ws is not None
        await m.ws.close()
