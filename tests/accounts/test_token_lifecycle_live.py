"""Credentials that end close their sockets with 4401 then: an expiring API token, a
session that expires (live nodes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support.live import Browser, manage
from tests.support.names import unique
from tests.support.wsclient import WsClient


async def test_a_socket_closes_4401_when_its_token_expires(node) -> None:
    name = unique()
    node.register(name)
    raw = manage(node.stack.env(), "issue_token", name, "--expires-in", "3s").stdout.strip()
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=raw)
    welcome = await client.welcome()
    assert 0 < welcome["expires_at"] - welcome["server_time"] <= 3_500
    assert await client.close_code(timeout=10) == 4401
    again = await WsClient.open(f"{node.ws_url}/ws/chat/", token=raw)
    assert await again.close_code() == 4401  # and it opens nothing any more


async def test_a_session_socket_closes_4401_when_its_session_expires(
    embedded_stack, make_node
) -> None:
    node = make_node(embedded_stack)  # the session store is the database on either stack
    name = unique()
    node.register(name)
    browser = Browser(node)
    browser.login(name)
    ends = datetime.now(UTC) + timedelta(seconds=3)
    stored = ends.replace(tzinfo=None).isoformat(sep=" ")  # SQLite keeps naive UTC text
    node.stack.sql(
        "UPDATE django_session SET expire_date = %s WHERE session_key = %s",
        stored,
        browser.cookie("sessionid"),
    )
    client = await WsClient.open(
        f"{node.ws_url}/ws/chat/", cookie=browser.cookie_header, origin=node.url
    )
    welcome = await client.welcome()
    assert 0 < welcome["expires_at"] - welcome["server_time"] <= 3_500
    assert await client.close_code(timeout=10) == 4401
