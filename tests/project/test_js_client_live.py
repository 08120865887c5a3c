"""The JavaScript client with the application's tokens, in Chromium against a live node.

A page on the application's own origin (a small HTTP server here, listed in
ALLOWED_ORIGINS) imports the package module from the node, as an application
does, and gets its tokens from "its backend" (that server): connection tokens
through getToken(), subscription tokens through getSubscriptionToken() or a
per-topic token. Embedded mode only: the client does not depend on the mode.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support.appserver import AppOrigin
from tests.support.browser import WAIT_MS, launch_chromium
from tests.support.live import DaphneNode, Stack, http, manage
from tests.support.names import unique
from tests.support.services import free_port
from tests.support.topics import published

pytestmark = pytest.mark.timeout(150)

SECRET = "j" * 48
NAMESPACES = {"prices": {"access": "open"}, "room": {"history_size": 50, "access": "token"}}
# Short enough that the test sees refreshes, long enough that a loaded machine
# still fits getToken(), the exchange and the refresh inside it.
SHORT_TOKEN_S = 9


class AppBackend:
    """The application: serves its page and signs tokens for its user, logging each one."""

    def __init__(self, node_url: str) -> None:
        self.node_url = node_url
        self.sub = ""
        self.token_seconds = 300
        self.issued: list[dict[str, Any]] = []  # connection tokens: {exp, at}
        self.subscription_tokens: list[str] = []  # topics, in order of issue
        self.web = AppOrigin()
        self.web.page = self.page()
        self.web.routes["/tether-token"] = lambda query: self.connection_token()
        self.web.routes["/room-token"] = lambda query: self.subscription_token(query["topic"])

    @property
    def origin(self) -> str:
        return self.web.origin

    def page(self) -> str:
        # The module is loaded from the node, cross-origin, as a deployed app does.
        return f"""<!doctype html><title>app</title>
<script type="module">
import * as tether from "{self.node_url}/static/tether/client.js";
window.tether = tether;
</script>"""

    def connection_token(self) -> str:
        exp = int(time.time()) + self.token_seconds
        self.issued.append({"exp": exp, "at": time.time()})
        return jwt.encode({"sub": self.sub, "exp": exp}, SECRET, "HS256")

    def subscription_token(self, topic: str) -> str:
        self.subscription_tokens.append(topic)
        claims = {"sub": self.sub, "topic": topic, "exp": int(time.time()) + 300}
        return jwt.encode(claims, SECRET, "HS256")

    def close(self) -> None:
        self.web.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


@pytest.fixture(scope="module")
def app_and_node(
    embedded_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AppBackend, DaphneNode]]:
    node = DaphneNode(
        stack=embedded_stack, name=unique("jsapp-"), log_dir=tmp_path_factory.mktemp("js")
    )
    # The node's port is known before it starts, so the app's page can name it.
    node.port = free_port()
    app = AppBackend(node.url)
    node.settings = {
        "JWT_SECRET": SECRET,
        "ALLOWED_ORIGINS": app.origin,
        "TOPIC_NAMESPACES": json.dumps(NAMESPACES),
    }
    node.start()
    yield app, node
    node.stop()
    app.close()


@pytest.fixture
def app(app_and_node: tuple[AppBackend, DaphneNode]) -> AppBackend:
    app = app_and_node[0]
    app.sub, app.token_seconds = unique("app-user-"), 300
    app.issued.clear()
    app.subscription_tokens.clear()
    return app


@pytest.fixture
def tether_node(app_and_node: tuple[AppBackend, DaphneNode]) -> DaphneNode:
    return app_and_node[1]


@pytest.fixture
def page(browser: Any, app: AppBackend) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app.origin + "/")
    page.wait_for_function("() => window.tether !== undefined")
    yield page
    context.close()
    assert not errors, errors


def service_token(node: DaphneNode, scopes: str) -> str:
    name = unique("backend")
    node.register(name)
    return manage(node.stack.env(), "issue_token", name, "--scope", scopes).stdout.strip()


def disconnect(node: DaphneNode, token: str, sub: str, code: int) -> None:
    status, body, _ = http(
        "POST",
        f"{node.url}/api/server/users/{sub}/disconnect/",
        {"code": code},
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 200 and body["closed"] >= 1, body


# The client under test, built in the page; every event it emits is logged with
# the page's clock so the test can wait on them.
START = """([kind, wsUrl]) => {
    window.log = [];
    const record = (type, detail) => window.log.push({type, at: Date.now(), detail});
    const getToken = async () => {
        record("getToken", null);
        return (await fetch("/tether-token")).text();
    };
    const options = {url: wsUrl, getToken};
    if (kind === "stream") {
        options.getSubscriptionToken = async (topic) => topic === "room:" + window.roomA
            ? (await fetch("/room-token?topic=" + topic)).text()
            : null;
    }
    const client = kind === "chat" ? new window.tether.ChatClient(options)
                                   : new window.tether.StreamClient(options);
    for (const type of ["state", "welcome", "refresh", "refresh-failed", "auth-required",
                        "disconnect", "subscribed", "subscribe-failed", "pub"]) {
        client.addEventListener(type, (event) => record(type, event.detail));
    }
    window.client = client;
    client.connect();
}"""


def events(page: Any, kind: str) -> list[dict[str, Any]]:
    return page.evaluate("(kind) => window.log.filter((e) => e.type === kind)", kind)


def wait_events(page: Any, kind: str, count: int, timeout: float = WAIT_MS) -> list[dict[str, Any]]:
    page.wait_for_function(
        "([kind, count]) => window.log.filter((e) => e.type === kind).length >= count",
        arg=[kind, count],
        timeout=timeout,
    )
    return events(page, kind)


def test_get_token_connects_with_a_ticket_refreshes_before_expiry_and_recovers_from_4401(
    page: Any, app: AppBackend, tether_node: DaphneNode
) -> None:
    app.token_seconds = SHORT_TOKEN_S
    page.evaluate(START, ["chat", tether_node.ws_url + "/ws/chat/"])
    welcome = wait_events(page, "welcome", 1)[0]
    log = page.evaluate("() => window.log.map((e) => e.type)")
    assert log.index("getToken") < log.index("welcome")  # a token before the connect
    assert page.evaluate("() => window.client.conn.auth") == "ticket"
    # Nothing else could have let this page in: no session, a JWT never goes in a URL.
    assert welcome["detail"]["user"]["external_id"] == app.sub
    first_exp_ms = app.issued[0]["exp"] * 1000
    assert welcome["detail"]["expires_at"] == first_exp_ms

    # Refreshes keep the socket past the first token's end: wait for a refresh
    # answered after that moment (the second one, on the refreshed token).
    page.wait_for_function(
        "(end) => window.log.some((e) => e.type === 'refresh' && e.at > end)",
        arg=first_exp_ms,
        timeout=(SHORT_TOKEN_S * 3) * 1000,
    )
    refreshes = events(page, "refresh")
    assert refreshes[0]["at"] < first_exp_ms  # the first one came before the end
    ends = [r["detail"]["expires_at"] for r in refreshes]
    assert ends == sorted(ends) and ends[0] > first_exp_ms
    assert [e["exp"] * 1000 for e in app.issued[1 : len(ends) + 1]] == ends
    assert events(page, "refresh-failed") == []
    assert len(events(page, "welcome")) == 1 and events(page, "disconnect") == []
    # Still the same open socket: it answers a request.
    assert page.evaluate("async () => (await window.client.conversations()).conversations") == []
    assert page.evaluate("() => window.client.state") == "connected"

    # Closed with 4401 (e.g. the backend ends the session): a new token, a new ticket, back.
    issued = len(app.issued)
    disconnect(tether_node, service_token(tether_node, "connections"), app.sub, 4401)
    second = wait_events(page, "welcome", 2)[1]
    assert len(app.issued) > issued
    assert second["detail"]["user"]["external_id"] == app.sub
    assert second["detail"]["connection_id"] != welcome["detail"]["connection_id"]
    assert events(page, "auth-required") == []
    page.evaluate("() => window.client.close()")


def test_subscription_tokens_are_sent_on_subscribe_and_again_after_a_reconnect(
    page: Any, app: AppBackend, tether_node: DaphneNode
) -> None:
    room_a, room_b = unique("a"), unique("b")
    topic_a, topic_b, topic_c = f"room:{room_a}", f"room:{room_b}", f"room:{unique('c')}"
    page.evaluate("(room) => { window.roomA = room; }", room_a)
    page.evaluate(START, ["stream", tether_node.ws_url + "/ws/stream/"])
    wait_events(page, "welcome", 1)
    # One topic from getSubscriptionToken, one with a token of its own, one without any.
    static_token = jwt.encode(
        {"sub": app.sub, "topic": topic_b, "exp": int(time.time()) + 300}, SECRET, "HS256"
    )
    page.evaluate(
        """([a, b, c, token]) => {
            window.client.subscribe(a);
            window.client.subscribe(b, {token});
            window.client.subscribe(c);
        }""",
        [topic_a, topic_b, topic_c, static_token],
    )
    subscribed = wait_events(page, "subscribed", 2)
    assert {s["detail"]["topic"] for s in subscribed} == {topic_a, topic_b}
    failed = wait_events(page, "subscribe-failed", 1)[0]["detail"]
    assert (failed["topic"], failed["code"]) == (topic_c, "forbidden")
    assert app.subscription_tokens == [topic_a]

    service = service_token(tether_node, "publish,connections")
    published(tether_node, service, topic_a, {"n": 1})
    published(tether_node, service, topic_b, {"n": 1})
    wait_events(page, "pub", 2)

    disconnect(tether_node, service, app.sub, 4401)
    wait_events(page, "welcome", 2)
    again = wait_events(page, "subscribed", 4)[2:]
    assert {s["detail"]["topic"] for s in again} == {topic_a, topic_b}
    assert all(s["detail"]["resumed"] and s["detail"]["recovered"] for s in again)
    assert app.subscription_tokens == [topic_a, topic_a]  # asked again for the resubscribe

    published(tether_node, service, topic_a, {"n": 2})
    published(tether_node, service, topic_b, {"n": 2})
    pubs = wait_events(page, "pub", 4)
    seen = sorted(
        (p["detail"]["topic"], p["detail"]["offset"], p["detail"]["data"]["n"]) for p in pubs
    )
    assert seen == sorted([(topic_a, 1, 1), (topic_a, 2, 2), (topic_b, 1, 1), (topic_b, 2, 2)])
    page.evaluate("() => window.client.close()")
