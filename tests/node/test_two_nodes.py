"""Two daphne nodes on one PostgreSQL and one Redis: tickets, control messages, the reaper."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.support.live import Browser, manage
from tests.support.names import unique
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient


async def test_each_node_names_itself_and_sees_the_others_records(two_nodes) -> None:
    a, b = two_nodes
    token = a.register(unique())
    on_a = await WsClient.open(f"{a.ws_url}/ws/chat/", token=token)
    on_b = await WsClient.open(f"{b.ws_url}/ws/chat/", token=token)
    assert (await on_a.welcome())["node"] == "node-a"
    assert (await on_b.welcome())["node"] == "node-b"
    nodes = {row[0] for row in a.stack.sql("SELECT name FROM realtime_node")}
    assert {"node-a", "node-b"} <= nodes
    await on_a.close()
    await on_b.close()


async def test_a_ticket_is_used_once_across_nodes_even_racing(two_nodes) -> None:
    a, b = two_nodes
    token = a.register(unique())
    for _ in range(5):
        ticket = a.ticket(token)
        clients = await asyncio.gather(
            WsClient.open(f"{a.ws_url}/ws/chat/?ticket={ticket}"),
            WsClient.open(f"{b.ws_url}/ws/chat/?ticket={ticket}"),
        )
        outcomes = []
        for client in clients:
            frame_or_code: object
            try:
                frame_or_code = (await client.recv(timeout=5))["type"]
            except Exception:
                frame_or_code = await client.close_code()
            outcomes.append(frame_or_code)
        assert sorted(map(str, outcomes)) == ["4401", "welcome"], outcomes
        for client in clients:
            await client.close()


async def test_logout_on_one_node_closes_the_socket_on_the_other(two_nodes) -> None:
    a, b = two_nodes
    name = unique()
    a.register(name)
    browser = Browser(a)
    browser.login(name)
    ticket = await asyncio.to_thread(browser.ws_ticket)
    on_b = await WsClient.open(f"{b.ws_url}/ws/chat/?ticket={ticket}")
    await on_b.welcome()
    await asyncio.to_thread(browser.logout)
    assert await on_b.close_code() == 4401


async def test_the_reaper_removes_a_killed_nodes_records(production_stack, make_node) -> None:
    settings = {"HEARTBEAT_INTERVAL": "1", "PING_TIMEOUT": "3"}
    a = make_node(production_stack, unique("reaper-a-"), **settings)
    b = make_node(production_stack, unique("victim-b-"), **settings)
    token = a.register(unique())
    client = await WsClient.open(f"{b.ws_url}/ws/chat/", token=token)
    cid = (await client.welcome())["connection_id"]
    assert production_stack.sql("SELECT count(*) FROM realtime_liveconnection WHERE id = %s", cid)[
        0
    ][0]
    killed_at = time.monotonic()
    b.stop(signal.SIGKILL)  # a crash: nothing of b's cleanup runs

    def gone() -> bool:
        rows = production_stack.sql(
            "SELECT count(*) FROM realtime_liveconnection WHERE id = %s", cid
        )
        nodes = production_stack.sql("SELECT count(*) FROM realtime_node WHERE name = %s", b.name)
        return rows[0][0] == 0 and nodes[0][0] == 0

    # Within PING_TIMEOUT + 10 s of the crash (the users' `offline` follows at once).
    await eventually(gone, timeout=3 + 10, what="the reaper on node a")
    elapsed = time.monotonic() - killed_at
    # Reaped after PING_TIMEOUT + 10 s less a pass (1 s here) and the 2 s margin, of
    # silence; the last heartbeat came up to a pass before the kill. A live node
    # beats every pass: nine seconds of silence are far from it.
    assert elapsed >= 3 + 10 - 1 - 2 - 1
    assert "reaper removed silent nodes" in a.log_text()


async def test_disabling_an_account_closes_its_sockets_4403_on_every_node(two_nodes) -> None:
    a, b = two_nodes
    name = unique()
    token = a.register(name)
    on_a = await WsClient.open(f"{a.ws_url}/ws/chat/", token=token)
    on_b = await WsClient.open(f"{b.ws_url}/ws/stream/", token=token)
    await on_a.welcome()
    await on_b.welcome()
    script = (
        "from accounts.models import User; "
        f"u = User.objects.get(username='{name}'); u.is_active = False; u.save()"
    )
    manage(a.stack.env(), "shell", "-c", script)
    assert await on_a.close_code() == 4403
    assert await on_b.close_code() == 4403
    refused = await WsClient.open(f"{a.ws_url}/ws/chat/", token=token)
    assert await refused.close_code() == 4403


async def test_the_per_user_socket_limit_counts_every_node(production_stack, make_node) -> None:
    limit = {"MAX_CONNECTIONS_PER_USER": "2"}
    a, b = (
        make_node(production_stack, "node-a", **limit),
        make_node(production_stack, "node-b", **limit),
    )
    name = unique()
    token = a.register(name)
    on_a = await WsClient.open(f"{a.ws_url}/ws/stream/", token=token)
    await on_a.welcome()
    on_b = await WsClient.open(f"{b.ws_url}/ws/stream/", token=token)
    await on_b.welcome()
    for node in (a, b):  # a third socket, wherever it lands
        third = await WsClient.open(f"{node.ws_url}/ws/stream/", token=token)
        assert await third.close_code() == 4503
    await on_a.close()
    await eventually(
        lambda: (
            a.stack.sql(
                "SELECT count(*) FROM realtime_liveconnection l JOIN accounts_user u "
                "ON u.id = l.user_id WHERE u.username = %s",
                name,
            )[0][0]
            == 1
        ),
        what="the closed socket's record removed",
    )
    again = await WsClient.open(f"{b.ws_url}/ws/stream/", token=token)
    await again.welcome()
    other = await WsClient.open(f"{a.ws_url}/ws/stream/", token=a.register(unique()))
    await other.welcome()  # another user is not counted against this one
    for client in (on_b, again, other):
        await client.close()
