"""docs/integration.md's Python blocks, run as written against a live node."""

from __future__ import annotations

import asyncio
import io
import re
from contextlib import redirect_stdout
from typing import Any

import pytest

from tests.support.live import ROOT, DaphneNode, manage
from tests.support.names import unique
from tests.support.wsclient import WsClient

SECRET = "i" * 48


def python_blocks() -> list[str]:
    text = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture
def app_node(embedded_stack, make_node) -> DaphneNode:
    # What a reader runs first; the rows themselves are tested on both stacks.
    return make_node(embedded_stack, JWT_SECRET=SECRET)


async def test_the_integration_guide_works_as_written(
    app_node: DaphneNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("backend")
    app_node.register(name)
    service = manage(
        app_node.stack.env(),
        "issue_token",
        name,
        "--scope",
        "users,chat,publish,presence,connections",
    ).stdout.strip()
    monkeypatch.setenv("TETHER_URL", app_node.url)
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("SERVICE_TOKEN", service)
    blocks = python_blocks()
    assert len(blocks) >= 9, "the guide lost its examples"
    namespace: dict[str, Any] = {}
    printed = io.StringIO()

    def run_blocks() -> None:
        with redirect_stdout(printed):
            for block in blocks:
                exec(compile(block, "docs/integration.md", "exec"), namespace)

    # In a thread of its own, as a reader's script runs: a block may call asyncio.run().
    await asyncio.to_thread(run_blocks)
    out = printed.getvalue()
    assert "'external_id': 'u-1001'" in out
    # The SDK's section: typed errors, and the bot's message after the system one.
    assert "bad_request publications[0].topic" in out and "forbidden" in out
    assert "['Welcome aboard', 'Hello from a bot']" in out

    # The token the guide signs opens a socket as the user the guide created.
    token = namespace["tether_token"]("u-1001", "ada")
    client = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=token)
    welcome = await client.welcome()
    assert welcome["user"]["external_id"] == "u-1001"
    assert welcome["user"]["username"] == "ada"
    await client.close()
