"""A removed member hears nothing more of the conversation (PROTOCOL 6, `left`), whatever
`sync` frames its sockets send around the removal, on two nodes over PostgreSQL+Redis."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from channels.db import database_sync_to_async

from realtime.chat import conversations, sends
from realtime.chat.consumer import ChatConsumer
from realtime.chat.fanout import still_shares
from realtime.models import Conversation
from tests.support import focused
from tests.support.chat import Person, expect_skipping, group, person, send
from tests.support.live import DaphneNode
from tests.support.names import unique
from tests.support.waiting import eventually
from tests.support.wsclient import ConnectionClosedByServer, WsClient

CONVERSATIONS = 20
MESSAGES_BEFORE = 30  # each `sync` replays them all: a long window between read and subscribe
SYNCS_IN_FLIGHT = 3
ROUNDS_AFTER_REMOVAL = 3  # rounds of activity in every conversation once all `left` are in
# The attack sends far more frames than a person; the rate limit has its own tests.
FAST = {"RATE_LIMIT_PER_SECOND": "5000", "RATE_LIMIT_BURST": "10000"}
CONVERSATION_FRAMES = ("message", "typing", "receipt")


class Recorder:
    """Reads every frame of one socket and keeps it; sends `sync` again on each `synced`."""

    def __init__(self, ws: WsClient, positions: dict[str, int]) -> None:
        self.ws = ws
        self.positions = positions
        self.frames: list[dict[str, Any]] = []
        self.syncing = True
        self.syncs = 0
        self.task = asyncio.create_task(self._run())

    async def _sync(self) -> None:
        self.syncs += 1
        await self.ws.send({"type": "sync", "id": f"s{self.syncs}", "positions": self.positions})

    async def _run(self) -> None:
        # Several in flight: the socket is never between two `sync` frames.
        for _ in range(SYNCS_IN_FLIGHT):
            await self._sync()
        with contextlib.suppress(ConnectionClosedByServer):
            while True:
                frame = await self.ws.recv(timeout=3600)
                self.frames.append(frame)
                if frame["type"] == "synced" and self.syncing:
                    await self._sync()

    def left(self) -> set[str]:
        return {f["conversation"] for f in self.frames if f["type"] == "left"}

    def after_left(self, removed: set[str], shared_with: set[int]) -> list[dict]:
        """Frames of a removed conversation after its `left`, and presence of users the
        socket shares no conversation with any more, after the last `left`."""
        gone: set[str] = set()
        bad = []
        for frame in self.frames:
            kind = frame["type"]
            if kind == "left":
                gone.add(frame["conversation"])
            elif kind in CONVERSATION_FRAMES and frame["conversation"] in gone:
                bad.append(frame)
            elif kind == "presence" and gone >= removed and frame["user"]["id"] in shared_with:
                bad.append(frame)
        return bad


async def _activity(
    sender: WsClient, reader: WsClient, conversations: list[str], rounds: int | None
) -> None:
    """A message, a read receipt and a typing in each conversation, round after round."""
    n = 0
    while rounds is None or n < rounds:
        for cid in conversations:
            ack = await send(sender, cid, f"r{n}")
            await reader.send({"type": "read", "conversation": cid, "seq": ack["seq"]})
            await sender.send({"type": "typing", "conversation": cid})
        n += 1


async def _reply(ws: WsClient, request_id: str) -> dict[str, Any]:
    """The server's direct reply to the frame with this `id` (other frames pass by)."""
    while (frame := await ws.recv(timeout=10)).get("id") != request_id:
        pass
    return frame


async def _presence_flaps(who: Person, node: DaphneNode, stop: asyncio.Event) -> None:
    """`who` goes online and offline again and again: presence for everyone it shares with."""
    while not stop.is_set():
        ws = await who.socket(node)
        await ws.close()


async def test_nothing_reaches_a_removed_member_whatever_it_syncs(
    production_stack, make_node
) -> None:
    a = make_node(production_stack, unique("rm-a-"), **FAST)
    b = make_node(production_stack, unique("rm-b-"), **FAST)
    owner, user, sender, reader, flapper, friend = (person(a) for _ in range(6))
    removed = [
        group(a, owner, user, sender, reader, flapper, title=f"g{i}") for i in range(CONVERSATIONS)
    ]
    kept = group(b, friend, user, title="kept")
    send_socket, read_socket = await sender.socket(a), await reader.socket(b)
    for n in range(MESSAGES_BEFORE):
        for cid in removed:
            await send(send_socket, cid, f"before {n}")
    sockets = [await user.socket(node) for node in (a, b, a, b)]
    recorders = [Recorder(ws, {cid: 0 for cid in [*removed, kept]}) for ws in sockets]
    await eventually(lambda: all(r.syncs >= 2 for r in recorders), 30, "syncs under way")

    flapping = asyncio.Event()
    activity = asyncio.create_task(_activity(send_socket, read_socket, removed, None))
    flaps = asyncio.create_task(_presence_flaps(flapper, b, flapping))
    # Last listed first: a `sync` that read the memberships just before a removal
    # still has the conversations listed before it to replay.
    for cid in reversed(removed):
        status, body = await asyncio.to_thread(
            owner.api, a, "DELETE", f"/api/conversations/{cid}/members/{user.id}/"
        )
        assert status == 204, body
    await eventually(
        lambda: all(r.left() >= set(removed) for r in recorders), 30, "`left` on every socket"
    )
    # Activity goes on in every removed conversation after every socket got `left`.
    activity.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await activity
    await _activity(send_socket, read_socket, removed, ROUNDS_AFTER_REMOVAL)
    flapping.set()
    await flaps
    for recorder in recorders:
        recorder.syncing = False

    # The positive control: a message of a conversation the user is still in, sent
    # after everything above, reaches every socket.
    friend_socket = await friend.socket(a)
    control = await send(friend_socket, kept, "still here")
    for recorder in recorders:
        await eventually(
            lambda r=recorder: any(
                f["type"] == "message" and f.get("message_id") == control["message_id"]
                for f in r.frames
            ),
            30,
            "the control message",
        )
    shared = {sender.id, reader.id, flapper.id, owner.id}
    for recorder in recorders:
        assert recorder.after_left(set(removed), shared) == []

    # The removed user's own frames for those conversations are refused; a `sync` of
    # them replays nothing and subscribes nothing.
    probe = sockets[0]
    for recorder in recorders:
        recorder.task.cancel()
    for ws in sockets:
        ws.__dict__["stash"] = []
    await probe.send({"type": "typing", "id": "t1", "conversation": removed[0]})
    assert (await _reply(probe, "t1"))["code"] == "forbidden"
    await probe.send({"type": "read", "id": "r1", "conversation": removed[0], "seq": 1})
    assert (await _reply(probe, "r1"))["code"] == "forbidden"
    await probe.send({"type": "sync", "id": "last", "positions": {cid: 0 for cid in removed}})
    synced = await _reply(probe, "last")
    assert synced["type"] == "synced" and synced["conversations"] == {}, synced
    await send(send_socket, removed[0], "after the last sync")
    control = await send(friend_socket, kept, "control again")
    while (frame := await expect_skipping(probe, "message", timeout=10))["message_id"] != control[
        "message_id"
    ]:
        assert frame["conversation"] != removed[0], frame
    for ws in (*sockets, send_socket, read_socket, friend_socket):
        await ws.close()


@pytest.mark.django_db(transaction=True)
async def test_a_sync_that_read_the_memberships_before_a_removal_does_not_subscribe_again(
    runtime, monkeypatch
) -> None:
    """The race made certain: the `sync` reads the memberships, then the removal commits
    and its `left` is handled on the socket, then the `sync` goes on with what it read."""
    (alice, _), (bob, b_token) = await focused.person(), await focused.person()
    removed = (await focused.group(alice, bob)).pk
    kept = (await focused.group(alice, bob)).pk
    say = database_sync_to_async(sends.send)
    await say(alice, removed, "before", "stored before the removal")
    b = await focused.chat(b_token, synced=True)

    handled = threading.Event()
    real_left = ChatConsumer.tether_left

    async def tether_left(self: ChatConsumer, message: dict[str, Any]) -> None:
        await real_left(self, message)
        handled.set()

    monkeypatch.setattr(ChatConsumer, "tether_left", tether_left)
    real_read = conversations.conversation_heads_page

    def read_then_removed(user_id: int, after: str, limit: int) -> tuple[dict[str, int], bool]:
        read = real_read(user_id, after, limit)
        if not handled.is_set():
            conversations.do_remove_member(Conversation.objects.get(pk=removed), bob.pk)
            assert handled.wait(focused.WAIT), "the `left` was not handled"
        return read

    monkeypatch.setattr(conversations, "conversation_heads_page", read_then_removed)
    await b.send_json_to({"type": "sync", "id": "s", "positions": {removed: 0, kept: 0}})
    frames = []
    while (frame := await b.receive_json_from(focused.WAIT))["type"] != "synced":
        frames.append(frame)
    assert frames == [{"type": "left", "conversation": removed}]
    assert set(frame["conversations"]) == {kept}
    await say(alice, removed, "after", "stored after the removal")
    control = await say(alice, kept, "control", "the positive control")
    frame = await b.receive_json_from(focused.WAIT)
    assert (frame["type"], frame["message_id"]) == ("message", control.message.id), frame
    await b.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_removal_while_the_socket_opens_is_not_lost(runtime, monkeypatch) -> None:
    """The memberships are read before `welcome`; a removal committed right after, while
    the socket is recorded but not yet open, still reaches it (after its `welcome`)."""
    (alice, _), (bob, b_token) = await focused.person(), await focused.person()
    removed = await focused.group(alice, bob)
    kept = (await focused.group(alice, bob)).pk
    real_before_welcome = ChatConsumer.before_welcome

    async def before_welcome(self: ChatConsumer) -> None:
        await real_before_welcome(self)
        await database_sync_to_async(conversations.do_remove_member)(removed, bob.pk)

    monkeypatch.setattr(ChatConsumer, "before_welcome", before_welcome)
    b = await focused.chat(b_token)
    assert await b.receive_json_from(focused.WAIT) == {"type": "left", "conversation": removed.pk}
    await b.send_json_to({"type": "sync", "id": "s", "positions": {removed.pk: 0, kept: 0}})
    frame = await b.receive_json_from(focused.WAIT)
    assert frame["type"] == "synced" and set(frame["conversations"]) == {kept}, frame
    say = database_sync_to_async(sends.send)
    await say(alice, removed.pk, "after", "stored after the removal")
    control = await say(alice, kept, "control", "the positive control")
    frame = await b.receive_json_from(focused.WAIT)
    assert (frame["type"], frame["message_id"]) == ("message", control.message.id), frame
    await b.disconnect()


def test_presence_reaches_a_socket_only_while_it_shares_a_conversation() -> None:
    """The audience was read when the presence changed; a socket removed since from the
    conversations it shared with that user no longer hears of it."""
    socket = SimpleNamespace(cursors={"k1": 3}, removed={})
    assert still_shares(socket, ["k1", "k2"])  # type: ignore[arg-type]
    assert still_shares(socket, ["k9"])  # type: ignore[arg-type]  # still opening: the audience holds
    socket.removed = {"k2": 1}
    assert still_shares(socket, ["k1", "k2"])  # type: ignore[arg-type]  # k1 still shared
    assert not still_shares(socket, ["k2"])  # type: ignore[arg-type]
    socket.cursors = {}
    assert not still_shares(socket, ["k1", "k2"])  # type: ignore[arg-type]
