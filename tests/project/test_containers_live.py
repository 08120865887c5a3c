"""The shipped Dockerfile and deploy/docker-compose.yml, built and run with a real engine.

One stack for the module (tests/support/containers.py says how the images are
made without a registry): PostgreSQL, Redis, two Tether nodes and nginx, each
from the compose file as shipped, reached only through nginx on loopback
ports. Torn down (`down -v`) whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import containers
from tests.support.chat import collect, expect_message_from, expect_skipping, send
from tests.support.names import unique
from tests.support.nginx import NginxFront, throwaway_certificate
from tests.support.services import ServiceUnavailable, free_port, require_or_skip
from tests.support.wsclient import ConnectionClosedByServer, WsClient

pytestmark = pytest.mark.timeout(1200)

NODES = ("tether-1", "tether-2")
PASSWORD = "a-Long-test-passw0rd"
READY_TIMEOUT = 240.0


@dataclass
class Deployed:
    stack: containers.ComposeStack
    front: NginxFront  # its `http` and `ssl` only: nginx runs in the stack

    def http(self, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, data, _ = self.front.http(method, path, body, headers)
        return status, data

    async def socket(self, token: str, endpoint: str = "chat") -> tuple[WsClient, str]:
        """A socket through nginx and the node that took it (welcome's `node`)."""
        client = await WsClient.open(
            f"{self.front.ws_url}/ws/{endpoint}/", token=token, ssl=self.front.ssl
        )
        welcome = await client.welcome(10)
        return client, welcome["node"]

    def user(self) -> tuple[int, str]:
        name = unique("c")
        status, body = self.http(
            "POST", "/api/auth/register/", {"username": name, "password": PASSWORD}
        )
        assert status == 201, body
        status, body = self.http(
            "POST", "/api/auth/token/", {"username": name, "password": PASSWORD}
        )
        assert status == 200, body
        token = body["token"]
        status, me = self.http("GET", "/api/me/", token=token)
        assert status == 200, me
        return me["id"], token


def _wait(what: str, check, timeout: float, stack: containers.ComposeStack) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = check()
            if last is True:
                return
        time.sleep(1)
    raise AssertionError(
        f"{what} not within {timeout:.0f}s (last: {last!r})\n{stack.logs(tail=40)}"
    )


def _env_file(path: Path) -> None:
    password = secrets.token_urlsafe(16)
    vapid = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    # The shipped example with its placeholders filled in, as a user does.
    text = (containers.ROOT / "deploy" / "compose.env.example").read_text()
    text = text.replace("POSTGRES_PASSWORD=CHANGE-ME", f"POSTGRES_PASSWORD={password}")
    text = text.replace("tether:CHANGE-ME@postgres", f"tether:{password}@postgres")
    text = text.replace(
        "SECRET_KEY=CHANGE-ME-to-a-long-random-string", f"SECRET_KEY={secrets.token_urlsafe(50)}"
    )
    text = text.replace("VAPID_PRIVATE_KEY=CHANGE-ME", f"VAPID_PRIVATE_KEY={vapid}")
    text = text.replace("ALLOWED_HOSTS=chat.example.com,", "ALLOWED_HOSTS=127.0.0.1,")
    text = text.replace("METRICS_TOKEN=CHANGE-ME", f"METRICS_TOKEN={secrets.token_urlsafe(32)}")
    text = text.replace(
        "GF_SECURITY_ADMIN_PASSWORD=CHANGE-ME", f"GF_SECURITY_ADMIN_PASSWORD={password}"
    )
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert not [line for line in settings if "CHANGE-ME" in line], settings
    path.write_text(text)
    path.chmod(0o600)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("containers")
    try:
        engine = containers.start_engine(work)
        base = containers.base_image(engine)
    except ServiceUnavailable as exc:
        require_or_skip(f"container test: {exc}")
    started = time.monotonic()
    images = containers.stand_ins(engine, base)
    tether = containers.build_tether(
        engine, images["python"], f"tether-test/tether:{uuid.uuid4().hex[:8]}"
    )
    built = time.monotonic() - started

    certs = work / "certs"
    certs.mkdir()
    cert, key, cert_pem = throwaway_certificate(certs)
    cert.rename(certs / "fullchain.pem")
    key.rename(certs / "privkey.pem")
    env_file = work / "compose.env"
    _env_file(env_file)
    https_port, http_port = free_port(), free_port()
    stack = containers.ComposeStack(
        engine,
        f"tethertest{uuid.uuid4().hex[:8]}",
        {
            "TETHER_IMAGE": tether,
            "POSTGRES_IMAGE": images["postgres"],
            "REDIS_IMAGE": images["redis"],
            "NGINX_IMAGE": images["nginx"],
            "PROMETHEUS_IMAGE": images["prometheus"],
            "PROMETHEUS_PORT": f"127.0.0.1:{free_port()}",
            "TETHER_ENV_FILE": str(env_file),
            "TETHER_CERTS": str(certs),
            "TETHER_HOST": "localhost",
            "TETHER_HTTPS_PORT": f"127.0.0.1:{https_port}",
            "TETHER_HTTP_PORT": f"127.0.0.1:{http_port}",
        },
    )
    context = ssl.create_default_context(cadata=cert_pem)
    front = NginxFront(prefix=work, https_port=https_port, http_port=http_port, ssl=context)
    try:
        stack.compose("up", "-d", "--no-build", timeout=600)
        deployed = Deployed(stack, front)

        def ready() -> bool | tuple:
            health = tuple(stack.health(node) for node in NODES)
            if health == ("healthy",) * len(NODES):
                return deployed.http("GET", "/ready/")[0] == 200
            return health

        _wait("both nodes healthy and /ready/ through nginx", ready, READY_TIMEOUT, stack)
        up = time.monotonic() - started - built
        print(f"\ncontainer images built in {built:.0f}s, stack up in {up:.0f}s")
        yield deployed
    except BaseException:
        print(stack.logs(tail=80))
        raise
    finally:
        stack.down()
        with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
            engine.docker_run("image", "rm", tether, check=False)


def test_image_runs_as_the_manifests_expect(deployed: Deployed) -> None:
    """Non-root (uid 10001, as deploy/kubernetes/ runs it), daphne as PID 1 so that
    SIGTERM reaches it, no secret baked into the image, the health check on /ready/."""
    stack = deployed.stack
    config = stack.inspect("tether-1")["Config"]
    assert config["User"] == "10001:10001"
    assert stack.inspect("tether-1")["HostConfig"]["ReadonlyRootfs"] is True
    assert "/ready/" in " ".join(config["Healthcheck"]["Test"])
    cmdline = stack.compose("exec", "-T", "tether-1", "cat", "/proc/1/cmdline")
    assert cmdline.split("\0")[1].endswith("daphne"), cmdline
    listing = stack.compose("exec", "-T", "tether-1", "ls", "-A", "/srv/tether/var")
    assert sorted(listing.split()) == ["media", "staticfiles"], listing
    # Read-only but for the media volume (attachments) and /tmp.
    stack.compose("exec", "-T", "tether-1", "sh", "-c", "touch var/media/.w /tmp/.w")
    denied = stack.compose("exec", "-T", "tether-1", "touch", "var/.w", check=False)
    assert "Read-only file system" in denied, denied
    # Static files come from the image through nginx (whitenoise in the node).
    status, body = deployed.http("GET", "/static/tether/client.js")
    assert status == 200 and "WebSocket" in body


def test_migrations_ran_once(deployed: Deployed) -> None:
    """Both nodes started together on an empty database (AUTO_MIGRATE=on): one
    applied the migrations under the advisory lock, the other found none left."""
    logs = {node: deployed.stack.logs(node) for node in NODES}
    applied = [node for node, text in logs.items() if "pending migrations" in text]
    assert len(applied) == 1, {node: text[-2000:] for node, text in logs.items()}
    plan = deployed.stack.manage("tether-2", "migrate", "--plan")
    assert "No planned migration operations" in plan, plan


def test_monitoring_profile_scrapes_every_node(deployed: Deployed) -> None:
    """`--profile monitoring`: Prometheus scrapes both nodes with METRICS_TOKEN as job
    `tether` and loads the shipped alert rules. (Grafana is not in Debian, so it is
    not run here; the dashboard rewrite its service does is checked on the file.)"""
    stack = deployed.stack
    stack.compose("up", "-d", "--no-build", "prometheus", timeout=300, monitoring=True)
    base = "http://" + stack.variables["PROMETHEUS_PORT"]

    def get(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            return json.load(response)["data"]

    def targets() -> bool | list:
        found = [
            (t["labels"]["instance"], t["labels"]["job"], t["health"], t["lastError"])
            for t in get("/api/v1/targets")["activeTargets"]
        ]
        return sorted(found) == [(f"{node}:8000", "tether", "up", "") for node in NODES] or found

    _wait("Prometheus scraping both nodes", targets, 90, stack)
    rules = [r["name"] for g in get("/api/v1/rules")["groups"] for r in g["rules"]]
    assert "TetherConnectionsNearLimit" in rules, rules
    query = urllib.parse.quote('count by (instance) ({job="tether", __name__=~"tether_.+"})')
    series = get(f"/api/v1/query?query={query}")["result"]
    assert {s["metric"]["instance"] for s in series} == {f"{n}:8000" for n in NODES}, series

    # What the grafana service's sed makes of the shipped dashboard.
    dashboard = (containers.ROOT / "deploy" / "grafana-dashboard.json").read_text()
    provisioned = json.loads(dashboard.replace("${DS_PROMETHEUS}", "prometheus"))
    assert "${DS_" not in json.dumps(provisioned)
    assert '"uid": "${DS_PROMETHEUS}"' in dashboard or '"uid":"${DS_PROMETHEUS}"' in dashboard


async def test_chat_and_publication_across_nodes_and_a_node_stopped(deployed: Deployed) -> None:
    """Through nginx: log in, two users on different nodes chat, a publication
    arrives, then the node one of them is on is stopped (SIGTERM: 1012) and that
    client resumes on the other node with nothing missed; the node comes back
    and takes sockets again."""
    stack = deployed.stack
    assert deployed.http("GET", "/health/")[0] == 200
    _, alice_token = deployed.user()
    bob_id, bob_token = deployed.user()
    status, body = deployed.http(
        "POST",
        "/api/conversations/",
        {"kind": "group", "title": "containers", "members": [bob_id]},
        alice_token,
    )
    assert status == 201, body
    cid = body["id"]

    # nginx balances by open connections: two sockets land on the two nodes.
    alice, alice_node = await deployed.socket(alice_token)
    bob, bob_node = await deployed.socket(bob_token)
    extra = []
    while bob_node == alice_node and len(extra) < 4:
        extra.append(bob)
        bob, bob_node = await deployed.socket(bob_token)
    assert {alice_node, bob_node} == set(NODES), (alice_node, bob_node)

    ack = await send(alice, cid, "hello from " + alice_node)
    message = await expect_skipping(bob, "message", 10)
    assert (message["body"], message["seq"]) == ("hello from " + alice_node, ack["seq"])
    reply = await send(bob, cid, "hello from " + bob_node)
    assert (await expect_message_from(alice, bob_id, 10))["seq"] == reply["seq"]

    # A publication from a backend token issued with manage.py inside a node.
    name = re.sub(r"[^A-Za-z0-9]", "", unique("P"))
    topic = f"prices:{name}"
    publisher = stack.manage(
        alice_node, "issue_token", _username(deployed, alice_token), "--publish"
    )
    publisher = publisher.strip().splitlines()[-1].strip()
    stream, _ = await deployed.socket(bob_token, "stream")
    await stream.send({"type": "subscribe", "id": "s1", "topic": topic})
    await stream.expect("subscribed", 10)
    status, body = deployed.http(
        "POST", f"/api/topics/{topic}/publish/", {"data": {"p": 1}}, publisher
    )
    assert status == 201, body
    pub = await stream.expect("pub", 10)
    assert pub["data"] == {"p": 1}
    await stream.close()

    # Stop Bob's node: it drains (1012) and exits cleanly within the grace period.
    last_seen = reply["seq"]
    stopping = asyncio.create_task(
        asyncio.to_thread(stack.compose, "stop", "-t", "30", bob_node, timeout=120)
    )
    started = time.monotonic()
    assert await bob.close_code(20) == 1012
    sent = [await send(alice, cid, f"while {bob_node} stops {n}") for n in range(3)]
    await stopping
    stopped_in = time.monotonic() - started
    state = stack.inspect(bob_node)["State"]
    assert state["ExitCode"] == 0 and stopped_in < 30, (state, stopped_in)

    # Bob reconnects through nginx, lands on the node that is left and resumes.
    reconnect_started = time.monotonic()
    again, node = await _reconnect(deployed, bob_token)
    print(f"reconnected to {node} in {time.monotonic() - reconnect_started:.1f}s")
    assert node == alice_node
    await again.send({"type": "sync", "id": "s", "positions": {cid: last_seen}})
    await expect_skipping(again, "synced", 10, keep=True)
    got = [m["seq"] for m in await collect(again, "message", len(sent), 10)]
    assert got == [a["seq"] for a in sent], got

    # The node starts again (its volume, name and address kept) and nginx
    # sends it sockets again: by open connections, the next ones go to it.
    stack.compose("start", bob_node)
    _wait(f"{bob_node} healthy again", lambda: stack.health(bob_node) == "healthy", 120, stack)
    seen = set()
    more = []
    for _ in range(4):
        client, node = await deployed.socket(bob_token)
        more.append(client)
        seen.add(node)
        if bob_node in seen:
            break
    assert bob_node in seen, seen
    for client in [alice, again, *more, *extra]:
        await client.close()


def _username(deployed: Deployed, token: str) -> str:
    status, me = deployed.http("GET", "/api/me/", token=token)
    assert status == 200, me
    return me["username"]


async def _reconnect(deployed: Deployed, token: str, timeout: float = 60) -> tuple[WsClient, str]:
    """Reconnect as a client does (a short backoff between attempts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await deployed.socket(token)
        except (TimeoutError, OSError, ConnectionClosedByServer):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
