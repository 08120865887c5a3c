"""Operators: createsuperuser from the environment, live connections in the admin."""

from __future__ import annotations

from tests.support.live import STAFF_PASSWORD, Browser, DaphneNode
from tests.support.names import unique
from tests.support.wsclient import WsClient


async def test_staff_see_live_connections_and_nodes(node: DaphneNode) -> None:
    admin = unique("admin")
    node.create_superuser(admin)
    user = unique("watched")
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=node.register(user))
    cid = (await client.welcome())["connection_id"]
    browser = Browser(node)
    browser.login(admin, STAFF_PASSWORD)
    page = browser.opener.open(node.url + "/admin/realtime/liveconnection/", timeout=10)
    html = page.read().decode()
    assert cid in html and user in html and node.name in html
    assert "idle" in html and "127.0.0.1" in html
    page = browser.opener.open(node.url + "/admin/realtime/node/", timeout=10)
    assert node.name in page.read().decode()
    add = browser.request("GET", "/admin/realtime/liveconnection/add/")
    assert add == 403  # read-only
    await client.close()


def test_non_staff_cannot_open_the_admin(node: DaphneNode) -> None:
    name = unique()
    node.register(name)
    browser = Browser(node)
    browser.login(name)
    page = browser.opener.open(node.url + "/admin/realtime/liveconnection/", timeout=10)
    assert "/admin/login/" in page.url
