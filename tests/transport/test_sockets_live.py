"""PROTOCOL 1-5 over real sockets against a live daphne, in both modes."""

from __future__ import annotations

import asyncio
import signal

import pytest
from websockets.exceptions import InvalidStatus

from tests.support.live import Browser, DaphneNode, http
from tests.support.names import unique
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient


def connection_ids(node: DaphneNode) -> set[str]:
    rows = node.stack.sql(
        "SELECT c.id FROM realtime_liveconnection c JOIN realtime_node n ON n.id = c.node_id "
        "WHERE n.name = %s",
        node.name,
    )
    return {row[0] for row in rows}


@pytest.mark.parametrize("endpoint", ["chat", "stream"])
async def test_welcome_on_both_endpoints_names_the_node(node: DaphneNode, endpoint: str) -> None:
    name = unique()
    token = node.register(name)
    client = await WsClient.open(f"{node.ws_url}/ws/{endpoint}/", token=token)
    welcome = await client.welcome()
    assert welcome["node"] == node.name
    assert welcome["user"]["username"] == name and isinstance(welcome["user"]["id"], int)
    assert welcome["protocol"] == 1 and welcome["heartbeat"] == {"interval": 25, "timeout": 60}
    assert set(welcome["limits"]) == {
        "max_frame_bytes",
        "max_body_chars",
        "max_subscriptions",
        "rate",
    }
    assert welcome["connection_id"] in connection_ids(node)
    await client.send({"type": "ping", "ts": 17})
    pong = await client.expect("pong")
    assert pong["ts"] == 17 and 0 <= pong["load"] <= 1
    await client.close()
    await eventually(lambda: welcome["connection_id"] not in connection_ids(node))


async def test_foreign_origins_are_refused_before_the_socket_opens(node: DaphneNode) -> None:
    token = node.register(unique())
    port = node.port
    for origin in (
        "http://evil.example",
        "null",
        f"http://127.0.0.1:{port + 1}",
        f"https://127.0.0.1:{port}",
        f"http://127.0.0.1.evil.example:{port}",
        f"http://evil.localhost:{port}",
        f"http://127.0.0.1:{port}/path",
    ):
        with pytest.raises(InvalidStatus) as info:
            await WsClient.open(f"{node.ws_url}/ws/chat/", token=token, origin=origin)
        assert info.value.response.status_code == 403, origin
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token, origin=origin)
        await client.welcome()
        await client.close()


async def test_configured_origins_are_matched_exactly(stack, make_node) -> None:
    node = make_node(stack, ALLOWED_ORIGINS="https://chat.example.com")
    token = node.register(unique())
    client = await WsClient.open(
        f"{node.ws_url}/ws/chat/", token=token, origin="https://chat.example.com:443"
    )
    await client.welcome()
    await client.close()
    for origin in ("https://evil-chat.example.com", f"http://127.0.0.1:{node.port}"):
        with pytest.raises(InvalidStatus):
            await WsClient.open(f"{node.ws_url}/ws/chat/", token=token, origin=origin)


async def test_credentials_and_their_order(node: DaphneNode) -> None:
    name = unique()
    token = node.register(name)
    browser = Browser(node)
    browser.login(name)
    origin = node.url
    # 1. session cookie, only with an allowed Origin
    client = await WsClient.open(
        f"{node.ws_url}/ws/chat/", cookie=browser.cookie_header, origin=origin
    )
    assert (await client.welcome())["user"]["username"] == name
    await client.close()
    no_origin = await WsClient.open(f"{node.ws_url}/ws/chat/", cookie=browser.cookie_header)
    assert await no_origin.close_code() == 4401
    # 2. bearer token
    client = await WsClient.open(f"{node.ws_url}/ws/stream/", token=token)
    await client.welcome()
    await client.close()
    # 3. ticket: single use
    ticket = node.ticket(token)
    client = await WsClient.open(f"{node.ws_url}/ws/chat/?ticket={ticket}")
    await client.welcome()
    again = await WsClient.open(f"{node.ws_url}/ws/chat/?ticket={ticket}")
    assert await again.close_code() == 4401
    await client.close()
    # long-lived tokens are never accepted in the query string
    for query in (f"token={token}", f"ticket={token}", "ticket=tk_forged"):
        refused = await WsClient.open(f"{node.ws_url}/ws/chat/?{query}")
        assert await refused.close_code() == 4401
    refused = await WsClient.open(f"{node.ws_url}/ws/chat/", token="tt_revoked-or-forged")
    assert await refused.close_code() == 4401


async def test_logout_closes_that_sessions_sockets_4401(node: DaphneNode) -> None:
    name = unique()
    token = node.register(name)
    browser = Browser(node)
    browser.login(name)
    by_cookie = await WsClient.open(
        f"{node.ws_url}/ws/chat/", cookie=browser.cookie_header, origin=node.url
    )
    await by_cookie.welcome()
    ticket = await asyncio.to_thread(browser.ws_ticket)
    by_ticket = await WsClient.open(f"{node.ws_url}/ws/stream/?ticket={ticket}")
    await by_ticket.welcome()
    by_token = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token)
    await by_token.welcome()
    await asyncio.to_thread(browser.logout)
    assert await by_cookie.close_code() == 4401
    assert await by_ticket.close_code() == 4401
    await by_token.send({"type": "ping", "ts": 1})  # the API token's socket is unaffected
    assert (await by_token.expect("pong"))["ts"] == 1
    await by_token.close()


async def test_password_change_closes_session_sockets_4401(node: DaphneNode) -> None:
    name = unique()
    token = node.register(name)
    browser = Browser(node)
    browser.login(name)
    client = await WsClient.open(
        f"{node.ws_url}/ws/chat/", cookie=browser.cookie_header, origin=node.url
    )
    await client.welcome()
    with_token = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token)
    await with_token.welcome()
    status = await asyncio.to_thread(
        browser.post_form,
        "/accounts/password/",
        {
            "old_password": "a-Long-test-passw0rd",
            "new_password1": "another-Long-passw0rd",
            "new_password2": "another-Long-passw0rd",
        },
    )
    assert status == 200
    assert await client.close_code() == 4401
    # A new password revokes the user's API tokens too: their sockets close, and
    # the token no longer authenticates.
    assert await with_token.close_code() == 4401
    status, body, _ = http(
        "GET", f"{node.url}/api/me/", headers={"Authorization": f"Bearer {token}"}
    )
    assert (status, body["error"]) == (401, "not_authenticated")


async def test_frame_size_limit_over_real_sockets(stack, make_node) -> None:
    node = make_node(stack, MAX_FRAME_BYTES="4096")
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=node.register(unique()))
    assert (await client.welcome())["limits"]["max_frame_bytes"] == 4096
    prefix, suffix = '{"type":"ping","pad":"', '"}'
    exact = prefix + "x" * (4096 - len(prefix) - len(suffix)) + suffix
    await client.send(exact)
    assert (await client.expect("pong"))["type"] == "pong"
    await client.send(exact[:-2] + "x" + exact[-2:])
    assert await client.close_code() == 1009


async def test_errors_and_binary_frames_over_real_sockets(node: DaphneNode) -> None:
    client = await WsClient.open(f"{node.ws_url}/ws/stream/", token=node.register(unique()))
    await client.welcome()
    await client.send("][")
    assert (await client.expect("error"))["code"] == "bad_json"
    await client.send({"type": "warp", "id": "w" * 64})
    error = await client.expect("error")
    assert error["code"] == "unknown_type" and error["id"] == "w" * 64
    await client.send(b"\x89PNG")
    assert (await client.expect("error"))["code"] == "bad_json"
    await client.send(b"\x89PNG")
    assert await client.close_code() == 4400


async def test_heartbeat_ping_then_4408_and_cleanup(stack, make_node) -> None:
    node = make_node(stack, HEARTBEAT_INTERVAL="1", PING_TIMEOUT="3")
    token = node.register(unique())
    silent = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token, auto_pong=False)
    welcome = await silent.welcome()
    assert welcome["heartbeat"] == {"interval": 1, "timeout": 3}
    alive = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token)  # answers pings
    await alive.welcome()
    ping = await silent.recv(timeout=3)  # nothing sent to it for `interval`
    assert ping["type"] == "ping" and isinstance(ping["server_time"], int)
    assert await silent.close_code(timeout=6) == 4408
    await eventually(lambda: welcome["connection_id"] not in connection_ids(node), 5)
    # one line per connect and disconnect, with the close code
    await eventually(lambda: f"disconnect {welcome['connection_id']} " in node.log_text(), 5)
    log = node.log_text()
    assert f"connect {welcome['connection_id']} user=" in log
    assert "code=4408 reason=heartbeat_timeout" in log
    await alive.send({"type": "ping", "ts": 2})  # answering pings kept it open
    assert (await alive.expect("pong"))["ts"] == 2
    await alive.close()


async def test_last_seen_is_updated_in_batches(stack, make_node) -> None:
    node = make_node(stack, HEARTBEAT_INTERVAL="2", PING_TIMEOUT="10")
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=node.register(unique()))
    cid = (await client.welcome())["connection_id"]

    def seen() -> object:
        return node.stack.sql("SELECT last_seen FROM realtime_liveconnection WHERE id = %s", cid)[
            0
        ][0]

    first = seen()
    await client.send({"type": "ping"})
    await client.expect("pong")
    await eventually(lambda: seen() != first, 5, "last_seen to advance")
    await client.close()


async def test_server_shutdown_drains_with_1012_and_removes_records(stack, make_node) -> None:
    node = make_node(stack)
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=node.register(unique()))
    await client.welcome()
    assert connection_ids(node)
    exit_code = await asyncio.to_thread(node.stop, signal.SIGTERM)
    assert exit_code == 0
    assert await client.close_code() == 1012
    assert stack.sql("SELECT count(*) FROM realtime_node WHERE name = %s", node.name)[0][0] == 0
    assert not connection_ids(node)


async def test_credentials_never_reach_the_logs(node: DaphneNode) -> None:
    token = node.register(unique())
    ticket = node.ticket(token)
    client = await WsClient.open(f"{node.ws_url}/ws/chat/?ticket={ticket}")
    await client.welcome()
    await client.close()
    http("GET", f"{node.url}/health/?ticket={ticket}&token={token}")
    http("GET", f"{node.url}/api/me/", headers={"Authorization": f"Bearer {token}"})
    log = node.log_text()
    assert "/ws/chat/" in log and "/health/" in log  # the log is really written
    assert ticket not in log and token not in log
