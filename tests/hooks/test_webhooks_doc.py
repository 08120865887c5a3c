"""docs/webhooks.md's receivers run as written: the Python one in this process, the
JavaScript one under Node.js, each receiving a live node's events; both refuse a
request that is not signed with the secret and handle a repeated id once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from realtime.hooks import signing
from tests.support.chat import group, person
from tests.support.live import DaphneNode, Stack
from tests.support.services import free_port
from tests.support.waiting import eventually_sync

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
SECRET = "doc-receiver-secret-0123456789"


def block(language: str) -> str:
    """The first block of `language` in the page."""
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)[0]


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def python_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Callable[[], list]]]:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    scope: dict[str, Any] = {"__name__": "receiver"}
    exec(compile(block("python"), str(DOC), "exec"), scope)
    server = ThreadingHTTPServer(("127.0.0.1", 0), scope["TetherEvents"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/tether", lambda: list(scope["handled"])
    server.shutdown()
    server.server_close()


@pytest.fixture
def js_receiver(tmp_path: Path) -> Iterator[tuple[str, Callable[[], list]]]:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    script = tmp_path / "receiver.js"
    script.write_text(block("js"))
    out = tmp_path / "out.txt"
    port = free_port()
    with out.open("w") as sink:
        proc = subprocess.Popen(
            ["node", str(script)],
            env={**os.environ, "WEBHOOK_SECRET": SECRET, "PORT": str(port)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/tether"

    def listening() -> bool:
        try:
            return post(url, b"{}", {}) == 401
        except OSError:
            return False

    eventually_sync(listening, 10, "the Node.js receiver listening")

    def handled() -> list:
        return [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]

    yield url, handled
    proc.kill()
    proc.wait(5)


@pytest.mark.parametrize("language", ["python", "js"])
def test_the_documented_receivers_verify_and_deduplicate(
    language: str,
    embedded_stack: Stack,
    make_node: Callable[..., DaphneNode],
    request: pytest.FixtureRequest,
) -> None:
    url, handled = request.getfixturevalue(f"{language}_receiver")
    node = make_node(embedded_stack, WEBHOOK_URL=url, WEBHOOK_SECRET=SECRET)
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    status, message = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": "d1", "body": "hi"}
    )
    assert status == 201, message

    def of_conversation() -> list[dict]:
        return [e for e in handled() if e["data"].get("conversation") == cid]

    events = eventually_sync(lambda: len(of_conversation()) >= 4 and of_conversation(), 20)
    assert [e["type"] for e in events] == [
        "member.joined",
        "member.joined",
        "conversation.event",
        "notify.offline",
    ]
    assert events[2]["data"]["message_id"] == message["message_id"]

    # A repeated event is answered and handled once; a forged one is refused.
    again = events[2]
    raw = signing.body(again["id"], again["type"], again["ts"], json.dumps(again["data"]))
    now = int(time.time())
    assert post(url, raw, signing.headers(SECRET, again["id"], now, raw)) == 204
    assert post(url, raw, signing.headers("not-the-secret", again["id"], now, raw)) == 401
    stale = now - 3600
    assert post(url, raw, signing.headers(SECRET, again["id"], stale, raw)) == 401
    assert len(of_conversation()) == 4
