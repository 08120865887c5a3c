"""The shipped nginx site in front of a live node: sockets and REST pass, and the
per-address limits (handshake rate, open sockets, password POSTs) answer 429
before a request costs the node anything."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest
import websockets

from tests.support.live import http
from tests.support.names import unique
from tests.support.nginx import SHIPPED_SITE, Limits, TemplateError, template_site
from tests.support.waiting import eventually, eventually_sync
from tests.support.wsclient import WsClient

# Linux routes all of 127/8 to loopback: a client bound to this address is, to
# nginx, another client address.
OTHER_ADDRESS = "127.0.0.2"


def metric(node, line_start: str) -> float:
    """The value of the node's metric line that starts with `line_start`."""
    _, body, _ = http("GET", f"{node.url}/metrics")
    for line in body.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def template(text: str, limits: Limits = Limits()) -> str:  # noqa: B008
    return template_site(
        text,
        upstream_ports=[9001, 9002, 9003],
        https_port=8443,
        http_port=8080,
        certificate=SHIPPED_SITE.parent / "cert.pem",
        certificate_key=SHIPPED_SITE.parent / "key.pem",
        limits=limits,
    )


def test_the_template_changes_only_ports_certificate_and_the_numbers_asked() -> None:
    shipped = SHIPPED_SITE.read_text()
    for directive in ("limit_req_status 429;", "limit_conn_status 429;", "log_level warn;"):
        assert directive in shipped
    site = template(shipped, Limits(handshake_rate="1r/m", handshake_burst=5, ws_conn=3))
    assert re.findall(r"server 127\.0\.0\.1:(\d+) max_fails=3 fail_timeout=2s;", site) == [
        "9001", "9002", "9003",
    ]  # fmt: skip
    assert "listen 127.0.0.1:8443 ssl http2;" in site and "listen 127.0.0.1:8080;" in site
    assert "[::]" not in site and "letsencrypt" not in site
    assert "zone=tether_handshake:10m rate=1r/m;" in site
    assert "limit_req zone=tether_handshake burst=5 nodelay;" in site
    assert "limit_conn tether_ws_conn 3;" in site
    # Numbers not asked for stay the shipped ones.
    assert "zone=tether_password:10m rate=1r/s;" in site
    assert "limit_req zone=tether_password burst=60 nodelay;" in site
    # Whatever the template does not know fails loudly rather than running a
    # configuration nobody ships.
    for changed in (
        shipped.replace("    server 127.0.0.1:8002 max_fails=3 fail_timeout=2s;\n", ""),
        shipped.replace("listen [::]:443 ssl http2;", "listen [::]:443 ssl;"),
        shipped.replace("limit_conn tether_ws_conn 1000;", "limit_conn tether_ws 1000;"),
    ):
        with pytest.raises(TemplateError, match="changed shape"):
            template(changed, Limits(ws_conn=3))


async def test_sockets_and_rest_pass_through_nginx(embedded_stack, make_node, make_nginx_front):
    node = make_node(embedded_stack)
    front = make_nginx_front([node])  # the shipped numbers
    token = node.register(unique())

    chat = await WsClient.open(f"{front.ws_url}/ws/chat/", token=token, ssl=front.ssl)
    assert (await chat.welcome())["node"] == node.name
    await chat.send({"type": "ping", "id": "p1"})
    assert (await chat.expect("pong"))["id"] == "p1"

    bearer = {"Authorization": f"Bearer {token}"}
    status, body, _ = front.http("POST", "/api/auth/ws-ticket/", None, bearer)
    assert status == 201, body
    ticket = body["ticket"]
    stream = await WsClient.open(f"{front.ws_url}/ws/stream/?ticket={ticket}", ssl=front.ssl)
    await stream.welcome()
    await stream.send({"type": "ping", "id": "p2"})
    assert (await stream.expect("pong"))["id"] == "p2"

    status, body, _ = front.http("GET", "/api/me/", headers=bearer)
    assert status == 200 and body["username"], body
    assert front.http("GET", "/accounts/login/")[0] == 200
    assert front.http("GET", "/metrics")[0] == 404
    status, _, headers = front.http("GET", "/api/me/", tls=False)
    assert status == 301 and headers["Location"].startswith("https://")
    await chat.close()
    await stream.close()


async def test_a_junk_ticket_flood_beyond_the_burst_never_reaches_the_node(
    embedded_stack, make_node, make_nginx_front
):
    node = make_node(embedded_stack)
    # Per minute: nothing leaks out of the bucket during the test, so exactly
    # burst + 1 handshakes pass.
    front = make_nginx_front([node], Limits(handshake_rate="1r/m", handshake_burst=5))

    async def attempt() -> int:
        try:
            client = await WsClient.open(
                f"{front.ws_url}/ws/chat/?ticket=tk_{unique()}", ssl=front.ssl
            )
        except websockets.InvalidStatus as error:
            assert error.response.status_code == 429
            assert b'"error": "rate_limited"' in error.response.body
            return 429
        return await client.close_code()

    outcomes = await asyncio.gather(*(attempt() for _ in range(20)))
    assert Counter(outcomes) == {4401: 6, 429: 14}, outcomes
    # The node authenticated (and refused) the six, and saw nothing of the rest:
    # its own bound never had to act.
    await eventually(
        lambda: metric(node, 'tether_disconnects_total{code="4401",endpoint="chat"}') == 6,
        what="the node to count six 4401 closes",
    )
    assert metric(node, "tether_handshakes_refused_total") == 0

    def handshake_statuses() -> Counter[int]:
        return Counter(status for _, _, path, status in front.access_lines() if path == "/ws/chat/")

    await eventually(
        lambda: handshake_statuses().total() == 20, what="nginx's lines for the 20 handshakes"
    )
    assert handshake_statuses() == {101: 6, 429: 14}
    refusals = [line for line in front.error_tail(500).splitlines() if "limiting requests" in line]
    assert len(refusals) == 14
    assert all("[warn]" in line and 'zone "tether_handshake"' in line for line in refusals)

    # Another address has its own bucket.
    other = await WsClient.open(
        f"{front.ws_url}/ws/chat/", token=node.register(unique()), ssl=front.ssl,
        local_addr=(OTHER_ADDRESS, 0),
    )  # fmt: skip
    await other.welcome()
    await other.close()


async def test_sockets_beyond_limit_conn_are_refused_and_open_ones_keep_working(
    embedded_stack, make_node, make_nginx_front
):
    node = make_node(embedded_stack)
    front = make_nginx_front([node], Limits(ws_conn=3))
    token = node.register(unique())
    url = f"{front.ws_url}/ws/chat/"

    sockets = [await WsClient.open(url, token=token, ssl=front.ssl) for _ in range(3)]
    for client in sockets:
        await client.welcome()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await WsClient.open(url, token=token, ssl=front.ssl)
    assert refused.value.response.status_code == 429
    other = await WsClient.open(url, token=token, ssl=front.ssl, local_addr=(OTHER_ADDRESS, 0))
    await other.welcome()

    for i, client in enumerate(sockets):
        await client.send({"type": "ping", "id": f"p{i}"})
        assert (await client.expect("pong"))["id"] == f"p{i}"

    # A closed socket frees its place: nginx logs the socket's line when it lets
    # the connection go, in the same step as it stops counting it.
    await sockets.pop().close()
    await eventually(
        lambda: ("127.0.0.1", "GET", "/ws/chat/", 101) in front.access_lines(),
        what="nginx to finish the closed socket",
    )
    sockets.append(await WsClient.open(url, token=token, ssl=front.ssl))
    await sockets[-1].welcome()
    for client in [*sockets, other]:
        await client.close()


def test_password_posts_beyond_their_burst_get_429_and_nothing_else_does(
    embedded_stack, make_node, make_nginx_front
):
    node = make_node(embedded_stack)
    front = make_nginx_front([node], Limits(password_rate="1r/m", password_burst=3))
    name = unique()
    token = node.register(name)
    wrong = {"username": name, "password": "not-the-password"}

    # burst + 1 reach the node (which refuses the password), the rest stop at nginx.
    statuses = [front.http("POST", "/api/auth/token/", wrong)[0] for _ in range(6)]
    assert statuses == [401] * 4 + [429] * 2, statuses
    status, body, headers = front.http("POST", "/api/auth/token/", wrong)
    assert status == 429 and body["error"] == "rate_limited" and headers["Retry-After"] == "1"
    assert "Strict-Transport-Security" in headers
    # Every password endpoint shares the address's bucket, whatever the spelling.
    for path in ("/accounts/login/", "/admin/login/", "/api/auth/register/", "/api//auth/token/"):
        assert front.http("POST", path, {})[0] == 429, path

    # Nothing else is counted: pages, GETs, other REST, socket tickets.
    assert front.http("GET", "/accounts/login/")[0] == 200
    bearer = {"Authorization": f"Bearer {token}"}
    assert front.http("GET", "/api/me/", headers=bearer)[0] == 200
    assert front.http("POST", "/api/auth/ws-ticket/", None, bearer)[0] == 201
    # Another address has its own bucket.
    right = {"username": name, "password": "a-Long-test-passw0rd"}
    assert front.http("POST", "/api/auth/token/", right, source=OTHER_ADDRESS)[0] == 200
    eventually_sync(
        lambda: front.error_tail(100).count('by zone "tether_password"') >= 7,
        what="nginx's warn lines for the refused POSTs",
    )


async def test_least_conn_spreads_sockets_over_both_production_nodes(two_nodes, make_nginx_front):
    front = make_nginx_front(two_nodes)
    token = two_nodes[0].register(unique())
    url = f"{front.ws_url}/ws/chat/"
    # The first socket stays open, so the second goes to the node with none.
    first = await WsClient.open(url, token=token, ssl=front.ssl)
    second = await WsClient.open(url, token=token, ssl=front.ssl)
    nodes = {(await first.welcome())["node"], (await second.welcome())["node"]}
    assert nodes == {node.name for node in two_nodes}
    await first.close()
    await second.close()
