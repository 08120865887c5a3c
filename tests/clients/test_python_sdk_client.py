"""The SDK's asyncio clients against live nodes: resume after reconnects with nothing
lost or doubled, the outbox resent with the same ids, heartbeat both ways, close codes,
token refresh before expiry, typed errors on the socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from tether_client import (
    ChatClient,
    Forbidden,
    RateLimited,
    Server,
    StreamClient,
    apply_event,
    external,
    fetch_ticket,
)

from tests.support.blackhole import BlackholeProxy
from tests.support.live import DaphneNode
from tests.support.names import unique
from tests.support.sdk import SETTINGS, App, mint, one_stack, service_token, start_node
from tests.support.services import free_port

WAIT = 10


def group_of(app: App, creator: str, *members: dict[str, Any]) -> str:
    """A group conversation created over REST by the application user `creator`."""
    with Server(app.node.url, mint(creator)) as as_creator:
        body = {"kind": "group", "title": "t", "members": [m["id"] for m in members]}
        return as_creator.request("POST", "/api/conversations/", body)["id"]


def recorded(client: ChatClient | StreamClient) -> list[dict[str, Any]]:
    """Every frame the client sends from now on (with its connection's generation)."""
    frames: list[dict[str, Any]] = []
    send = client.conn.send_frame

    async def recording(frame: dict[str, Any]) -> bool:
        sent = await send(frame)
        if sent:
            frames.append({**frame, "_generation": client.conn.generation})
        return sent

    client.conn.send_frame = recording  # type: ignore[method-assign]
    return frames


class Gate:
    """A ticket provider that hands out tickets only while open: the test decides when
    a reconnect may happen (a ticket per attempt, as PROTOCOL 2 wants)."""

    def __init__(self, node_url: str, sub: str) -> None:
        self.node_url = node_url
        self.sub = sub
        self.open = asyncio.Event()
        self.open.set()
        self.asked = 0

    async def __call__(self) -> str:
        await self.open.wait()
        self.asked += 1
        return await fetch_ticket(self.node_url, mint(self.sub))


async def take(events: Any, count: int, type: str = "message") -> list[dict[str, Any]]:
    return [(await events.next(type, timeout=WAIT)).data for _ in range(count)]


async def test_messages_arrive_once_in_order_and_every_send_is_acked(app: App) -> None:
    (ann, _), (ben, ben_user) = app.user(), app.user()
    cid = group_of(app, ann, ben_user)
    async with ChatClient(app.ws, token=mint(ann)) as a, ChatClient(app.ws, token=mint(ben)) as b:
        acks, inbox = a.events("ack"), b.events("message")
        ids = [await a.send(cid, f"m{i}") for i in range(20)]
        got = await take(inbox, 20)
        assert [m["seq"] for m in got] == list(range(1, 21))
        assert [m["client_id"] for m in got] == ids and [m["body"] for m in got][:2] == ["m0", "m1"]
        assert {e["id"] for e in await take(acks, 20, "ack")} == set(ids)
        assert not a.outbox and b.positions[cid] == 20
        ack = await a.send_and_wait(cid, "waited")
        assert ack["seq"] == 21 and ack["duplicate"] is False
        history = await b.history(cid, after=19)
        assert [m["seq"] for m in history["messages"]] == [20, 21]


async def test_edits_deletes_reactions_and_replies_rebuild_the_senders_state(app: App) -> None:
    """PROTOCOL 10 through the SDK: `edit`, `delete`, `react` and `send`'s `reply_to`
    acknowledged like sends; `apply_event` over the frames gives the stored state."""
    (ann, _), (ben, ben_user) = app.user(), app.user()
    cid = group_of(app, ann, ben_user)
    async with ChatClient(app.ws, token=mint(ann)) as a, ChatClient(app.ws, token=mint(ben)) as b:
        acks, inbox = a.events("ack"), b.events("message")
        first = await a.send_and_wait(cid, "hello")
        mid = first["message_id"]
        reply = await a.send(cid, "re", reply_to=mid)
        await a.edit(cid, mid, "hello, fixed")
        await a.react(cid, mid, "👍")
        await a.react(cid, mid, "👍", on=False)
        await a.react(cid, mid, "🎉")
        gone = await a.delete(cid, mid)
        answered = {e["id"]: e for e in await take(acks, 7, "ack")}
        assert reply in answered and gone in answered and not a.outbox
        frames = await take(inbox, 7)
        assert [f["kind"] for f in frames] == [
            "message",
            "message",
            "edit",
            "reaction",
            "reaction",
            "reaction",
            "delete",
        ]
        assert frames[1]["reply_to"] == mid and frames[2]["target"] == mid
        local: dict[str, dict[str, Any]] = {}
        for frame in frames:
            apply_event(local, frame)
        again = await a.delete(cid, mid)  # twice: the first delete's ack
        second = (await acks.next("ack", timeout=WAIT)).data
        assert second["id"] == again and second["seq"] == answered[gone]["seq"]
        assert second["duplicate"] is True
        stored = {m["message_id"]: m for m in (await b.history(cid))["messages"]}
        for message_id, message in local.items():
            for field in ("body", "edited_at", "deleted", "reactions", "attachments"):
                assert message[field] == stored[message_id][field], field
        assert local[mid]["deleted"] and local[mid]["reactions"] == {"🎉": [ann_id(first, frames)]}


def ann_id(ack: dict[str, Any], frames: list[dict[str, Any]]) -> int:
    """The sender id of the message `ack` acknowledged."""
    return next(f["sender"]["id"] for f in frames if f["message_id"] == ack["message_id"])


async def test_positions_kept_by_the_application_resume_a_new_client(app: App) -> None:
    (ann, _), (ben, ben_user) = app.user(), app.user()
    cid = group_of(app, ann, ben_user)
    for i in range(5):
        app.server.post_message(cid, f"p{i}", f"m{i}", sender=external(ann))
    seen: list[int] = []
    replayed = asyncio.Queue[dict[str, Any]]()

    async def later(message: dict[str, Any]) -> None:
        await replayed.put(message)

    # As after a restart of the bot: it held messages 1 and 2.
    b = ChatClient(app.ws, token=mint(ben), positions={cid: 2})
    b.on("message", lambda m: seen.append(m["seq"]))
    undo = b.on("message", later)
    await b.connect()  # returns once `synced` arrived: the replay came before it
    assert seen == [3, 4, 5] and b.positions == {cid: 5}
    assert [(await replayed.get())["body"] for _ in range(3)] == ["m2", "m3", "m4"]
    undo()
    app.server.post_message(cid, "p5", "m5", sender=external(ann))
    await asyncio.wait_for(_until(lambda: seen[-1] == 6), WAIT)
    assert replayed.empty()  # the async callback was removed
    await b.close()


async def test_a_dropped_socket_resumes_with_sync_and_sends_its_outbox(app: App) -> None:
    (ann, _), (ben, ben_user) = app.user(), app.user()
    cid = group_of(app, ann, ben_user)
    gate = Gate(app.node.url, ben)
    async with ChatClient(app.ws, token=mint(ann)) as a, ChatClient(app.ws, get_ticket=gate) as b:
        inbox, ann_inbox = b.events("message"), a.events("message")
        control = b.events("synced", "disconnect")
        for i in range(3):
            await a.send_and_wait(cid, f"before {i}")
        assert [m["seq"] for m in await take(inbox, 3)] == [1, 2, 3]
        frames = recorded(b)

        gate.open.clear()
        b.conn.drop()
        await control.next("disconnect", timeout=WAIT)
        queued = [await b.send(cid, f"offline {i}") for i in range(2)]
        assert list(b.outbox) == queued
        for i in range(5):
            await a.send_and_wait(cid, f"while away {i}")
        gate.open.set()

        await control.next("synced", timeout=WAIT)
        got = await take(inbox, 7)
        assert [m["seq"] for m in got] == list(range(4, 11))
        assert [m["client_id"] for m in got[-2:]] == queued
        await asyncio.wait_for(_until(lambda: not b.outbox), WAIT)
        assert [f["type"] for f in frames if f["_generation"] == 2][:3] == ["sync", "send", "send"]
        sync = next(f for f in frames if f["type"] == "sync")
        assert sync["positions"] == {cid: 3}
        # Ann saw each of Ben's messages once.
        from_ben = [m for m in await take(ann_inbox, 10) if m["client_id"] in queued]
        assert [m["body"] for m in from_ben] == ["offline 0", "offline 1"]
        assert not inbox.pending()  # nothing twice
        assert gate.asked == 2


async def _until(check: Any) -> None:
    while not check():  # noqa: ASYNC110 - the outbox is a plain dict, not an event
        await asyncio.sleep(0.02)


class MuteProxy:
    """A loopback proxy whose answers from the server can be swallowed: the server
    gets and stores what the client sends, the client never hears back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.muted = False
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> MuteProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool
    ) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                if not (downstream and self.muted):
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        for pipe in (self._pipe(client_r, server_w, False), self._pipe(server_r, client_w, True)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


async def test_a_send_whose_ack_was_lost_is_resent_with_its_id_and_stored_once(
    app: App,
) -> None:
    (ann, _), (ben, ben_user) = app.user(), app.user()
    cid = group_of(app, ann, ben_user)
    proxy = await MuteProxy(app.node.port).start()
    # First through the proxy, then (after the drop) straight to the node.
    urls = [f"ws://127.0.0.1:{proxy.port}", app.ws]
    try:
        async with ChatClient(urls, token=mint(ann)) as a, ChatClient(app.ws, token=mint(ben)) as b:
            frames, acks, ben_inbox = recorded(a), a.events("ack"), b.events("message")
            proxy.muted = True
            sent = await a.send(cid, "the ack of this one is lost")
            stored = (await ben_inbox.next("message", timeout=WAIT)).data
            assert stored["client_id"] == sent  # the server has it; Ann has no ack
            assert sent in a.outbox
            a.conn.drop()
            ack = (await acks.next("ack", timeout=WAIT)).data
            assert ack["id"] == sent and ack["seq"] == stored["seq"]
            sends = [f for f in frames if f["type"] == "send"]
            assert [(f["id"], f["_generation"]) for f in sends] == [(sent, 1), (sent, 2)]
            history = await b.history(cid, after=0)
            assert [m["client_id"] for m in history["messages"]] == [sent]  # stored once
            assert not a.outbox
    finally:
        await proxy.close()


async def test_a_stream_resumes_from_its_offset_after_a_drop(app: App) -> None:
    sub, _ = app.user()
    topic = f"prices:{unique('S')}"
    gate = Gate(app.node.url, sub)
    async with StreamClient(app.ws, get_ticket=gate) as stream:
        events, control = stream.events("pub"), stream.events("subscribed", "disconnect")
        await stream.subscribe(topic)
        app.server.publish([(topic, i) for i in range(3)])
        assert [p["data"] for p in await take(events, 3, "pub")] == [0, 1, 2]
        gate.open.clear()
        stream.conn.drop()
        await control.next("disconnect", timeout=WAIT)
        app.server.publish([(topic, i) for i in range(3, 6)])
        gate.open.set()
        resumed = (await control.next("subscribed", timeout=WAIT)).data
        assert resumed["resumed"] and resumed["recovered"]
        app.server.publish([(topic, 6)])
        got = await take(events, 4, "pub")
        assert [(p["offset"], p["data"]) for p in got] == [(4, 3), (5, 4), (6, 5), (7, 6)]
        assert stream.topics[topic].offset == 7


# --- two nodes: one drains, its clients go on on the other ------------------------------


@pytest.fixture
def pair(production_stack, make_node) -> Iterator[tuple[DaphneNode, DaphneNode, Server]]:
    a = make_node(production_stack, "sdk-a", **SETTINGS)
    b = make_node(production_stack, "sdk-b", **SETTINGS)
    with Server(b.url, service_token(b, "users", "publish")) as server:
        yield a, b, server


async def test_a_node_restart_moves_clients_to_the_other_node_losing_nothing(pair) -> None:
    node_a, node_b, server = pair
    ann, ben = unique("ann-"), unique("ben-")
    server.put_user(ann)
    ben_user = server.put_user(ben)
    app_b = App(node_b, server, "")
    cid = group_of(app_b, ann, ben_user)
    topic = f"prices:{unique('N')}"
    urls = [node_a.ws_url, node_b.ws_url]
    gate = Gate(node_b.url, ben)
    async with (
        ChatClient(node_b.ws_url, token=mint(ann)) as a,
        ChatClient(urls, get_ticket=gate) as b,
        StreamClient(urls, token=mint(ben)) as feed,
    ):
        assert b.welcome and b.welcome["node"] == "sdk-a" and feed.welcome["node"] == "sdk-a"
        inbox, control = b.events("message"), b.events("state", "synced")
        pubs, subscribed = feed.events("pub"), feed.events("subscribed")
        await feed.subscribe(topic)
        await a.send_and_wait(cid, "first")
        server.publish([(topic, "first")])
        assert (await inbox.next("message", timeout=WAIT)).data["body"] == "first"
        assert (await pubs.next("pub", timeout=WAIT)).data["data"] == "first"

        gate.open.clear()
        await asyncio.to_thread(node_a.stop)  # SIGTERM: the node drains with 1012
        state = await control.next("state", lambda s: s["state"] == "reconnecting", WAIT)
        assert state.data.get("code") == 1012
        queued = await b.send(cid, "sent while the node restarted")
        for i in range(3):
            await a.send_and_wait(cid, f"meanwhile {i}")
        server.publish([(topic, i) for i in range(3)])
        gate.open.set()

        await control.next("synced", timeout=WAIT)
        got = await take(inbox, 4)
        assert [m["seq"] for m in got] == [2, 3, 4, 5] and got[-1]["client_id"] == queued
        assert b.welcome and b.welcome["node"] == "sdk-b"
        await subscribed.next(timeout=WAIT)  # the first subscribe
        resumed = (await subscribed.next(timeout=WAIT)).data
        assert resumed["recovered"] and feed.welcome and feed.welcome["node"] == "sdk-b"
        assert [p["data"] for p in await take(pubs, 3, "pub")] == [0, 1, 2]
        await asyncio.wait_for(_until(lambda: not b.outbox), WAIT)


# --- a node with tight limits: heartbeat, capacity, rate -----------------------------------


@pytest.fixture(scope="module")
def tight(embedded_stack, tmp_path_factory) -> Iterator[App]:
    node = start_node(
        embedded_stack,
        tmp_path_factory.mktemp("tight"),
        HEARTBEAT_INTERVAL="1",
        PING_TIMEOUT="3",
        MAX_CONNECTIONS_PER_USER="2",
        RATE_LIMIT_PER_SECOND="2",
        RATE_LIMIT_BURST="4",
        REPLAY_LIMIT="3",
    )
    with Server(node.url, service_token(node, "users", "publish", "chat")) as server:
        yield App(node, server, "")
    node.stop()


async def test_the_client_pings_when_idle_and_the_server_keeps_it(tight: App) -> None:
    sub, _ = tight.user()
    async with ChatClient(tight.ws, token=mint(sub)) as chat:
        events = chat.events("pong", "disconnect")
        assert chat.welcome and chat.welcome["heartbeat"] == {"interval": 1, "timeout": 3}
        # Five pings answered span more than the server's 3 s of patience.
        pongs = [(await events.next("pong", timeout=WAIT)).data for _ in range(5)]
        assert all(p["rtt"] >= 0 and 0 <= p["load"] <= 1 for p in pongs)
        why = f"closed with {chat.conn.close_code}"  # 4408: the server heard no ping
        assert chat.conn.generation == 1 and chat.state == "connected", why
        assert not [e for e in events.pending() if e.type == "disconnect"], why


async def test_the_client_answers_the_servers_pings(tight: App) -> None:
    sub, _ = tight.user()
    async with ChatClient(tight.ws, token=mint(sub)) as chat:
        events = chat.events("disconnect")
        answered = asyncio.Queue[dict[str, Any]]()
        send = chat.conn.send_frame

        async def no_pings_of_our_own(frame: dict[str, Any]) -> bool:
            # A client that never pings: only its answers keep it alive (PROTOCOL 5).
            if frame["type"] == "ping":
                return True
            sent = await send(frame)
            if frame["type"] == "pong":
                answered.put_nowait(frame)
            return sent

        chat.conn.send_frame = no_pings_of_our_own  # type: ignore[method-assign]
        # The server pings after 1 s without output; four answers span more than its
        # 3 s of patience (4408 otherwise).
        for _ in range(4):
            await asyncio.wait_for(answered.get(), WAIT)
        assert chat.conn.generation == 1 and chat.state == "connected"
        assert not events.pending()


async def test_a_silent_server_is_given_up_and_the_client_reconnects(tight: App) -> None:
    sub, _ = tight.user()
    proxy = await BlackholeProxy(tight.node.port).start()
    try:
        urls = [f"ws://127.0.0.1:{proxy.port}", tight.ws]
        async with ChatClient(urls, token=mint(sub)) as chat:
            events = chat.events("disconnect", "welcome", "state")
            proxy.cut()  # no FIN, no RST: only silence tells
            await events.next("disconnect", timeout=WAIT)
            state = await events.next("state", lambda s: s["state"] == "reconnecting", WAIT)
            assert state.data["code"] == 4000  # ours: nothing heard within heartbeat.timeout
            await events.next("welcome", timeout=WAIT)
            assert chat.conn.generation == 2
    finally:
        await proxy.close()


async def test_4503_backs_off_and_retries_until_there_is_room(tight: App) -> None:
    sub, _ = tight.user()
    first = await ChatClient(tight.ws, token=mint(sub)).connect()
    other = await StreamClient(tight.ws, token=mint(sub)).connect()  # the user's limit: 2
    second = ChatClient(tight.ws, token=mint(sub), random=lambda: 0.5)
    states = second.events("state")
    await second.connect(wait=False)
    codes = []
    for _ in range(3):
        state = await states.next("state", lambda s: s.get("code") == 4503, WAIT)
        codes.append((state.data["attempt"], state.data["delay"]))
    # Full jitter (here its middle): 0.25 s, 0.5 s, 1 s as the attempts grow.
    assert codes == [(1, 0.25), (2, 0.5), (3, 1.0)]
    await first.close()
    await second.wait_connected(WAIT)
    await second.close()
    await other.close()


async def test_socket_errors_are_typed_and_the_outbox_waits_out_rate_limits(tight: App) -> None:
    (ann, _), (_, ben_user), (cy, _) = tight.user(), tight.user(), tight.user()
    cid = group_of(tight, ann, ben_user)
    async with ChatClient(tight.ws, token=mint(cy)) as outsider:
        with pytest.raises(Forbidden) as raised:
            await outsider.history(cid)
        assert raised.value.code == "forbidden" and raised.value.status is None
    async with ChatClient(tight.ws, token=mint(ann)) as chat:
        results = await asyncio.gather(
            *(chat.presence([1]) for _ in range(8)), return_exceptions=True
        )
        limited = [r for r in results if isinstance(r, RateLimited)]
        assert limited and all(r.retry_after and r.retry_after > 0 for r in limited)
        ids = [await chat.send(cid, f"burst {i}") for i in range(8)]
        acks = chat.events("ack")
        got = {(await acks.next("ack", timeout=20)).data["id"] for _ in range(8)}
        assert got == set(ids) and not chat.outbox


async def test_an_incomplete_sync_is_paged_in_with_history(tight: App) -> None:
    (ann, _), (ben, ben_user) = tight.user(), tight.user()
    cid = group_of(tight, ann, ben_user)
    gate = Gate(tight.node.url, ben)
    async with ChatClient(tight.ws, get_ticket=gate) as b:
        inbox, synced = b.events("message"), b.events("synced")
        tight.server.post_message(cid, "first", "first", sender=external(ann))
        assert (await inbox.next(timeout=WAIT)).data["seq"] == 1
        gate.open.clear()
        b.conn.drop()
        for i in range(10):  # more than REPLAY_LIMIT (3) while Ben is away
            tight.server.post_message(cid, f"away-{i}", f"away {i}", sender=external(ann))
        frames = recorded(b)
        gate.open.set()
        reply = (await synced.next(timeout=WAIT)).data
        assert reply["conversations"][cid] == {"seq": 11, "replayed": 3, "complete": False}
        got = await take(inbox, 10)
        assert [m["seq"] for m in got] == list(range(2, 12))
        assert [m["body"] for m in got] == [f"away {i}" for i in range(10)]
        history = [f for f in frames if f["type"] == "history"]
        assert history and history[0]["after"] == 4  # paged after what the sync replayed
        assert not inbox.pending() and b.positions[cid] == 11


@one_stack
async def test_a_connection_token_is_refreshed_before_it_expires(app: App) -> None:
    sub, _ = app.user()
    ttls = iter([4, 120, 120])

    def provider() -> str:
        return mint(sub, next(ttls))

    short = ChatClient(app.ws, token=mint(sub, 4))  # the same life, no provider
    kept = ChatClient(app.ws, get_token=provider, refresh_before=60)
    await short.connect()
    await kept.connect()
    events, short_events = kept.events("refreshed", "disconnect"), short.events("auth_required")
    first_expiry = kept.conn.expires_at
    refreshed = (await events.next("refreshed", timeout=WAIT)).data
    assert first_expiry and refreshed["expires_at"] > first_expiry + 60_000
    await short_events.next("auth_required", timeout=WAIT)  # its 4401: the first expiry passed
    assert kept.state == "connected" and kept.conn.generation == 1
    assert not [e for e in events.pending() if e.type == "disconnect"]
    assert (await kept.conversations())["conversations"] == []
    await short.close()
    await kept.close()
