"""docs/integration.md run as written against a live node: its Python blocks as the
application's backend, then its JavaScript blocks in Chromium as the application's
page, on the application's own origin, talking to that backend for its tokens.

The only change made to the guide's code is its placeholder host
(`chat.example.com`), replaced by the live node's address.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from typing import Any

import pytest

from tests.support.appserver import AppOrigin
from tests.support.browser import WAIT_MS, launch_chromium
from tests.support.live import ROOT, DaphneNode, manage
from tests.support.names import unique
from tests.support.wsclient import WsClient

# Alone: a browser waiting on console output, slow under the other worker's load.
pytestmark = [pytest.mark.timeout(150), pytest.mark.alone]

SECRET = "i" * 48
NAMESPACES = {
    "prices": {"history_size": 1000, "history_ttl": 3600, "access": "open"},
    "room": {"history_size": 50, "access": "token"},
}


def blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


@pytest.fixture
def app() -> Iterator[AppOrigin]:
    app = AppOrigin()
    yield app
    app.close()


@pytest.fixture
def app_node(embedded_stack, make_node, app: AppOrigin) -> DaphneNode:
    # What a reader runs first; the rows themselves are tested on both stacks.
    return make_node(
        embedded_stack,
        JWT_SECRET=SECRET,
        ALLOWED_ORIGINS=app.origin,
        TOPIC_NAMESPACES=json.dumps(NAMESPACES),
    )


@pytest.fixture
def browser() -> Iterator[Any]:
    yield from launch_chromium()


def run_python_blocks(node: DaphneNode, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    name = unique("backend")
    node.register(name)
    service = manage(
        node.stack.env(),
        "issue_token",
        name,
        "--scope",
        "users,chat,publish,presence,connections",
    ).stdout.strip()
    monkeypatch.setenv("TETHER_URL", node.url)
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("SERVICE_TOKEN", service)
    python = blocks("python")
    assert len(python) >= 9, "the guide lost its examples"
    namespace: dict[str, Any] = {}
    printed = io.StringIO()

    def run_blocks() -> None:
        with redirect_stdout(printed):
            for block in python:
                exec(compile(block, "docs/integration.md", "exec"), namespace)

    # In a thread of its own, as a reader's script runs: the SDK's block calls
    # asyncio.run(), which a thread with a running loop (Playwright's) refuses.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(run_blocks).result()
    out = printed.getvalue()
    assert "'external_id': 'u-1001'" in out
    # The SDK's section: typed errors, and the bot's message after the system one.
    assert "bad_request publications[0].topic" in out and "forbidden" in out
    assert "['Welcome aboard', 'Hello from a bot']" in out
    return namespace


async def welcome_for(node: DaphneNode, token: str) -> dict[str, Any]:
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token)
    try:
        return await client.welcome()
    finally:
        await client.close()


def test_the_integration_guide_works_as_written(
    app_node: DaphneNode, app: AppOrigin, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = run_python_blocks(app_node, monkeypatch)

    # The token the guide signs opens a socket as the user the guide created.
    # In a thread of its own: Playwright's sync API holds this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        token = backend["tether_token"]("u-1001", "ada")
        welcome = pool.submit(asyncio.run, welcome_for(app_node, token)).result()
    assert welcome["user"]["external_id"] == "u-1001"
    assert welcome["user"]["username"] == "ada"

    # The guide's page, served by "the application" for its user u-1001.
    app.routes["/my-backend/tether-token"] = lambda q: backend["tether_token"]("u-1001", "ada")
    app.routes["/my-backend/room-token"] = lambda q: backend["subscription_token"](
        "u-1001", q["topic"]
    )
    script = "\n".join(blocks("js"))
    assert "getToken" in script and "getSubscriptionToken" in script
    script = script.replace("https://chat.example.com", app_node.url)
    script = script.replace("wss://chat.example.com", app_node.ws_url)
    # Exposed for this test only, to wait on the clients' states.
    script += "\nwindow.guide = { chat, feeds };\n"
    app.page = f'<!doctype html><title>app</title><script type="module">{script}</script>'

    context = browser.new_context()
    page = context.new_page()
    logged: list[str] = []
    page.on("console", lambda message: logged.append(message.text))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app.origin + "/")
    page.wait_for_function(
        "window.guide && guide.chat.state === 'connected' && guide.feeds.state === 'connected'",
        timeout=WAIT_MS,
    )

    # The backend's system message reaches the page live (section 4's group).
    tether = backend["tether"]
    path = f"/api/server/conversations/{backend['group']['id']}/messages/"
    status, _ = tether("POST", path, {"id": unique("n"), "body": "Lunch is served", "sender": None})
    assert status == 201
    _wait_logged(page, logged, "Lunch is served")

    # A topic only its readers may read (section 5): the page subscribed with a
    # token from its backend, and a publication arrives.
    page.wait_for_function(
        "guide.feeds.topics.get('room:42')?.offset != null",
        timeout=WAIT_MS,
    )
    status, _ = tether(
        "POST", "/api/server/publish/", {"publications": [{"topic": "room:42", "data": "hi"}]}
    )
    assert status == 201
    _wait_logged(page, logged, "room:42 hi")
    assert not errors, errors
    context.close()


def _wait_logged(page: Any, logged: list[str], text: str) -> None:
    """Wait, by Playwright's console event, until the page has logged `text`."""
    if text in logged:
        return
    with page.expect_console_message(lambda m: m.text == text, timeout=WAIT_MS):
        pass
