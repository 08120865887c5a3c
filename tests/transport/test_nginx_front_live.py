"""The shipped nginx site in front of live daphne nodes run as deploy/tether@.service
runs them (`--proxy-headers`): whose `X-Forwarded-For` a node believes, the idle
timeouts against the heartbeat, and the size limits against the node's.

The rolling restart under load is in `test_nginx_rolling_restart_live.py`, the
per-address limits in `test_nginx_limits_live.py`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter

import pytest
import websockets
from django.conf import global_settings

from project import config
from tests.support.live import DaphneNode, http
from tests.support.names import unique
from tests.support.nginx import SHIPPED_SITE, Limits, ws_location
from tests.support.wsclient import WsClient

pytestmark = pytest.mark.timeout(180)

# Linux routes all of 127/8 to loopback: a client bound to one of these is, to
# nginx and to a node, another address. nginx itself reaches the nodes from
# 127.0.0.1, the one address TRUSTED_PROXIES lists by default (with ::1).
CLIENT = "127.0.0.2"
DIRECT = "127.0.0.3"
FORGED = "203.0.113.77"


def seconds(value: str) -> float:
    """An nginx time (`120s`, `2m`, `500ms`, `30`) in seconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def ws_directives(site: str) -> dict[str, list[str]]:
    """The directives of `location /ws/` as {name: [arguments, ...]}."""
    start, end = ws_location(site)
    found: dict[str, list[str]] = {}
    for line in site[start:end].splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            name, _, args = line[:-1].partition(" ")
            found.setdefault(name, []).append(args.strip())
    return found


def recorded_address(node: DaphneNode, connection_id: str) -> str:
    rows = node.stack.sql(
        "SELECT remote_addr FROM realtime_liveconnection WHERE id = %s", connection_id
    )
    assert rows, f"no record for {connection_id}"
    return rows[0][0]


# ------------------------------------------------------------------ the file


def test_the_shipped_socket_location_outlasts_the_heartbeat_and_streams() -> None:
    """What the site must say for sockets, read from the shipped file: the idle
    timeouts exceed PING_TIMEOUT, which exceeds HEARTBEAT_INTERVAL (defaults of
    project/config.py), so a live idle socket carries a ping well inside nginx's
    timeout and a silent client is closed by the node's 4408 first."""
    ws = ws_directives(SHIPPED_SITE.read_text())
    defaults = {s.name: s.default for s in config.DECLARATIONS}
    heartbeat, ping_timeout = defaults["HEARTBEAT_INTERVAL"], defaults["PING_TIMEOUT"]
    assert heartbeat < ping_timeout
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = ws[directive]
        assert seconds(value) > ping_timeout, (directive, value)
    assert ws["proxy_http_version"] == ["1.1"]
    assert "Upgrade    $http_upgrade" in ws["proxy_set_header"]
    assert "Connection $connection_upgrade" in ws["proxy_set_header"]
    assert ws["proxy_buffering"] == ["off"]
    # The client address nginx passes is the one it saw, never a list a client began.
    assert "X-Forwarded-For   $remote_addr" in ws["proxy_set_header"]
    site = SHIPPED_SITE.read_text()
    directives = [line.split("#", 1)[0] for line in site.splitlines()]
    assert not any("$proxy_add_x_forwarded_for" in line for line in directives)
    # A REST publication may carry MAX_FRAME_BYTES of data at its largest (1 MiB),
    # JSON-escaped: nginx refuses no body the node reads (Django's bound).
    (body_limit,) = re.findall(r"^\s*client_max_body_size\s+(\d+)k;", site, flags=re.MULTILINE)
    largest_frame = next(s.maximum for s in config.DECLARATIONS if s.name == "MAX_FRAME_BYTES")
    assert int(body_limit) * 1024 == global_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert int(body_limit) * 1024 >= 2 * largest_frame


# --------------------------------------------------------------- timeouts, live

# Scaled down from the shipped 25 s / 60 s / 120 s, in the same order:
# HEARTBEAT_INTERVAL < PING_TIMEOUT < nginx's socket timeouts.
FAST_HEARTBEAT = {"HEARTBEAT_INTERVAL": "1", "PING_TIMEOUT": "2"}
NGINX_TIMEOUT = 4.0
FAST_NGINX = Limits(
    ws_read_timeout=f"{NGINX_TIMEOUT:.0f}s", ws_send_timeout=f"{NGINX_TIMEOUT:.0f}s"
)


async def test_an_idle_socket_answering_pings_outlives_nginx_and_a_silent_one_gets_4408(
    embedded_stack, make_node, make_nginx_front
) -> None:
    node = make_node(embedded_stack, proxy_headers=True, **FAST_HEARTBEAT)
    front = make_nginx_front([node], FAST_NGINX)
    token = node.register(unique())
    url = f"{front.ws_url}/ws/chat/"

    idle = await WsClient.open(url, token=token, ssl=front.ssl)  # answers pings
    silent = await WsClient.open(url, token=token, ssl=front.ssl, auto_pong=False)
    await idle.welcome()
    await silent.welcome()
    opened = time.monotonic()

    # The silent client: pinged by the node, never answering; the node closes it
    # with 4408 after PING_TIMEOUT, before nginx's timeout would have.
    assert await silent.close_code(timeout=NGINX_TIMEOUT * 3) == 4408
    print(f"silent client closed 4408 after {time.monotonic() - opened:.1f} s")

    # The idle client sends nothing of its own for 2.5 times nginx's timeout; the
    # node's pings (and its pongs) keep the proxied socket open.
    await asyncio.sleep(NGINX_TIMEOUT * 2.5)
    await idle.send({"type": "ping", "id": "still-there"})
    assert (await idle.expect("pong"))["id"] == "still-there"
    await idle.close()


async def test_without_the_heartbeat_nginx_would_cut_an_idle_socket(
    embedded_stack, make_node, make_nginx_front
) -> None:
    """The control for the test above: the templated timeout is really in force.
    A node that pings only after 30 s leaves an idle socket silent, and nginx
    drops it at its (templated) timeout with no close frame."""
    node = make_node(embedded_stack, proxy_headers=True, HEARTBEAT_INTERVAL="30")
    front = make_nginx_front([node], FAST_NGINX)
    client = await WsClient.open(
        f"{front.ws_url}/ws/chat/", token=node.register(unique()), ssl=front.ssl
    )
    await client.welcome()
    opened = time.monotonic()
    assert await client.close_code(timeout=NGINX_TIMEOUT * 4) is None  # dropped, no close frame
    assert NGINX_TIMEOUT - 0.5 < time.monotonic() - opened < NGINX_TIMEOUT * 3


# ------------------------------------------------------ X-Forwarded-For, live


async def test_the_node_believes_x_forwarded_for_only_from_nginx(
    production_stack, make_node, make_nginx_front
) -> None:
    # Per-address handshake bound on the node: 2 at once, then one a minute.
    bound = {"HANDSHAKE_RATE_PER_SECOND": "1", "HANDSHAKE_BURST": "3"}
    node = make_node(production_stack, unique("xff-"), proxy_headers=True, **bound)
    front = make_nginx_front([node])
    name = unique()
    token = node.register(name)
    staff = node.staff_token(unique("ops"))

    # Through nginx from CLIENT, even claiming another address: nginx replaces the
    # header with the address it saw, and the node, whose peer is nginx, takes it.
    via = await WsClient.open(
        f"{front.ws_url}/ws/chat/", token=token, ssl=front.ssl, local_addr=(CLIENT, 0),
        headers={"X-Forwarded-For": FORGED},
    )  # fmt: skip
    welcome = await via.welcome()
    assert recorded_address(node, welcome["connection_id"]) == CLIENT

    # Straight to the node from DIRECT (not a trusted proxy), forging the header:
    # its own address is recorded.
    direct = await WsClient.open(
        f"{node.ws_url}/ws/chat/", token=token, local_addr=(DIRECT, 0),
        headers={"X-Forwarded-For": FORGED, "X-Forwarded-Proto": "https"},
    )  # fmt: skip
    welcome = await direct.welcome()

    # A new forged address per handshake does not get a new bucket: ten at once
    # from DIRECT, each naming another address, share DIRECT's (one used, burst 3).
    async def attempt(n: int) -> int:
        try:
            extra = await WsClient.open(
                f"{node.ws_url}/ws/chat/", token=token, local_addr=(DIRECT, 0),
                headers={"X-Forwarded-For": f"198.51.100.{n + 1}"},
            )  # fmt: skip
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
        await extra.welcome()
        await extra.close()
        return 101

    outcomes = Counter(await asyncio.gather(*(attempt(n) for n in range(10))))
    # Two left in the bucket, and at most one refilled while they run.
    assert outcomes[101] <= 3 and outcomes[403] >= 7, outcomes

    assert recorded_address(node, welcome["connection_id"]) == DIRECT
    rows = await asyncio.to_thread(
        http, "GET", f"{node.url}/api/admin/connections/?user={name}",
        None, {"Authorization": f"Bearer {staff}"},
    )  # fmt: skip
    assert rows[0] == 200, rows
    addresses = {c["remote_addr"] for c in rows[1]["connections"]}
    assert addresses == {CLIENT, DIRECT}, addresses

    # HTTP alike: the password guard's address is the peer's (REMOTE_ADDR), so a
    # forged header neither spends another address's budget nor escapes its own.
    status, body, _ = await asyncio.to_thread(
        http, "GET", f"{node.url}/api/me/", None,
        {"Authorization": f"Bearer {token}", "X-Forwarded-For": FORGED},
    )  # fmt: skip
    assert status == 200, body
    for client in (via, direct):
        await client.close()


async def test_trusted_proxies_names_which_peers_may_forward(production_stack, make_node) -> None:
    """TRUSTED_PROXIES: a network trusts every peer in it, `*` every peer; a node that
    trusts no loopback address ignores the header even from 127.0.0.1."""
    token = None
    for trusted, expected in (("127.0.0.0/8", FORGED), ("*", FORGED), ("10.0.0.0/8", DIRECT)):
        node = make_node(
            production_stack, unique("trust-"), proxy_headers=True, TRUSTED_PROXIES=trusted
        )
        token = token or node.register(unique())
        client = await WsClient.open(
            f"{node.ws_url}/ws/chat/", token=token, local_addr=(DIRECT, 0),
            headers={"X-Forwarded-For": FORGED},
        )  # fmt: skip
        welcome = await client.welcome()
        assert recorded_address(node, welcome["connection_id"]) == expected, trusted
        await client.close()
        node.stop()


# -------------------------------------------------------------- sizes, live


async def test_frames_and_bodies_up_to_the_nodes_limits_pass_nginx(
    production_stack, make_node, make_nginx_front
) -> None:
    """nginx limits no WebSocket frame (the node's MAX_FRAME_BYTES does, with 1009:
    tests/transport/test_sockets_live.py): a frame of MAX_FRAME_BYTES at its
    largest passes, and so does a REST publication as large as the node accepts,
    delivered live through nginx."""
    largest = 1_048_576  # MAX_FRAME_BYTES at its maximum
    node = make_node(
        production_stack, unique("big-"), proxy_headers=True,
        MAX_FRAME_BYTES=str(largest), OUTBOUND_MAX_BYTES=str(4 * largest),
    )  # fmt: skip
    front = make_nginx_front([node])
    token = node.register(unique())
    url = f"{front.ws_url}/ws/chat/"

    client = await WsClient.open(url, token=token, ssl=front.ssl)
    await client.welcome()
    frame = '{"type":"ping","id":"big","pad":"%s"}'
    filler = largest - len(frame % "")
    await client.send(frame % ("x" * filler))  # exactly MAX_FRAME_BYTES: unknown fields ignored
    assert (await client.expect("pong", timeout=15))["id"] == "big"
    await client.close()

    # A publication of MAX_FRAME_BYTES of data over REST, through nginx, and live
    # to a subscriber through nginx.
    staff = node.staff_token(unique("ops"))
    stream = await WsClient.open(f"{front.ws_url}/ws/stream/", token=staff, ssl=front.ssl)
    await stream.welcome()
    await stream.send({"type": "subscribe", "id": "s", "topic": "prices:BIG"})
    await stream.expect("subscribed")
    data = "y" * (largest - 2)  # the JSON string's quotes make it MAX_FRAME_BYTES
    status, body, _ = await asyncio.to_thread(
        front.http, "POST", "/api/topics/prices:BIG/publish/", {"data": data},
        {"Authorization": f"Bearer {staff}"}, timeout=30,
    )  # fmt: skip
    assert status == 201, (status, str(body)[:200])
    pub = await stream.expect("pub", timeout=15)
    assert pub["data"] == data
    await stream.close()
