"""Playwright helpers: Debian's Chromium against a live daphne, driven only by data-testid hooks."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.live import DaphneNode, http, manage
from tests.support.names import unique
from tests.support.services import require_or_skip

CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a-Long-test-passw0rd"
# Generous: the machine running the suite is small and shared.
WAIT_MS = 20_000
# Reconnecting after a restart goes through real backoff (up to 8 s by then).
RECONNECT_MS = 45_000


def launch_chromium() -> Iterator[Any]:
    """Yield a Playwright Browser on the system Chromium, or skip/fail loudly without one."""
    if not os.access(CHROMIUM, os.X_OK):
        require_or_skip(
            f"browser tests need Chromium at {CHROMIUM} (Debian: apt-get install chromium; "
            "or set TETHER_CHROMIUM); Playwright's own browser downloads are not used"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the venv predates the requirement
        require_or_skip(f"the playwright package is missing ({exc}); run scripts/venv.sh")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def staff_token(node: DaphneNode, username: str, password: str) -> str:
    status, body, _ = http(
        "POST", node.url + "/api/auth/token/", {"username": username, "password": password}
    )
    assert status == 200, body
    return body["token"]


@dataclass
class User:
    username: str
    token: str
    id: int


def make_user(node: DaphneNode, username: str) -> User:
    token = node.register(username, PASSWORD)
    status, me, _ = http("GET", node.url + "/api/me/", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, me
    return User(username, token, me["id"])


class Tab:
    """One page in its own browser context (its own cookies, its own network switch)."""

    def __init__(self, browser: Any, node: DaphneNode) -> None:
        self.node = node
        self.context = browser.new_context(viewport={"width": 1200, "height": 800})
        self.context.set_default_timeout(WAIT_MS)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.console_errors.append(str(exc)))

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def close(self) -> None:
        self.context.close()

    # --- navigation ---------------------------------------------------------

    def login(self, user: User, path: str = "/chat/") -> None:
        """Visit `path` anonymously, get sent to the login form, and come back to it."""
        self.page.goto(self.node.url + path)
        assert "/accounts/login/" in self.page.url, self.page.url
        assert f"next={path}" in self.page.url.replace("%2F", "/"), self.page.url
        self.page.fill('input[name="username"]', user.username)
        self.page.fill('input[name="password"]', PASSWORD)
        self.page.click('button[type="submit"]')
        self.page.wait_for_url(re.compile(re.escape(self.node.url + path)))
        self.wait_state("connected")

    def by_id(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def wait_state(self, state: str, timeout: float = WAIT_MS) -> None:
        self.page.wait_for_selector(
            f'[data-testid="connection-status"][data-state="{state}"]', timeout=timeout
        )

    # --- chat ---------------------------------------------------------------

    def start_conversation(self, names: str) -> str:
        """Start a chat with user name(s) from the UI; the opened conversation's id."""
        box = self.by_id("new-conversation")
        box.fill(names)
        box.press("Enter")
        active = self.page.wait_for_selector('[data-testid="conversation"].active')
        return active.get_attribute("data-conversation-id")

    def conversation(self, cid: str) -> Any:
        return self.page.locator(f'[data-testid="conversation"][data-conversation-id="{cid}"]')

    def open(self, cid: str) -> None:
        self.conversation(cid).click()
        self.page.wait_for_selector(
            f'[data-testid="conversation"][data-conversation-id="{cid}"].active'
        )

    def send(self, text: str) -> None:
        composer = self.by_id("composer")
        composer.fill(text)
        composer.press("Enter")

    def messages(self) -> list[dict[str, Any]]:
        """The message list as shown: body text, state and seq of each element, in order."""
        return self.page.eval_on_selector_all(
            '[data-testid="message-list"] [data-testid="message"]',
            """els => els.map(e => ({
                body: e.querySelector('.body').textContent,
                state: e.dataset.state,
                seq: e.dataset.seq === undefined ? null : Number(e.dataset.seq),
            }))""",
        )

    def bodies(self) -> list[str]:
        return [m["body"] for m in self.messages()]

    def wait_bodies(self, expected: list[str], timeout: float = WAIT_MS) -> None:
        """Wait until the list ends with `expected`, every one of them acknowledged."""
        self.page.wait_for_function(
            """expected => {
                const els = [...document.querySelectorAll(
                    '[data-testid="message-list"] [data-testid="message"]')];
                const tail = els.slice(-expected.length);
                return tail.length === expected.length && tail.every(
                    (e, i) => e.querySelector('.body').textContent === expected[i]
                        && e.dataset.state === 'sent');
            }""",
            arg=expected,
            timeout=timeout,
        )


SEED_CODE = """
import secrets, time
from django.db import transaction
from realtime.models import Conversation, Message
cid, senders, count = {cid!r}, {senders!r}, {count}
with transaction.atomic():
    conversation = Conversation.objects.select_for_update().get(id=cid)
    start, now = conversation.last_seq, int(time.time() * 1000)
    Message.objects.bulk_create(
        [
            Message(
                id="m_" + secrets.token_hex(10),
                conversation_id=cid,
                seq=start + i,
                sender_id=senders[i % len(senders)],
                client_id="seed-" + secrets.token_hex(12),
                body=f"message {{start + i}}",
                ts=now + i,
            )
            for i in range(1, count + 1)
        ],
        batch_size=1000,
    )
    Conversation.objects.filter(id=cid).update(last_seq=start + count)
"""


def tab_factory(browser: Any, node: DaphneNode) -> Iterator[Callable[[], Tab]]:
    """For a pytest fixture: make tabs on `node`; all are closed afterwards."""
    tabs: list[Tab] = []

    def make() -> Tab:
        tab = Tab(browser, node)
        tabs.append(tab)
        return tab

    yield make
    for tab in tabs:
        tab.close()


def seed_messages(node: DaphneNode, cid: str, senders: list[int], count: int) -> None:
    """Store `count` messages ("message <seq>") straight into the database, as a long history.

    Sending 10,000 messages through the socket would take minutes under the rate
    limit; the pages only need them to exist. Conversations followed by a live
    socket get them through the node's periodic head check, as after a lost fan-out.
    """
    code = SEED_CODE.format(cid=cid, senders=senders, count=count)
    manage(node.stack.env(), "shell", "-c", code)


def create_conversation(node: DaphneNode, owner: User, other: User) -> str:
    status, body, _ = http(
        "POST",
        node.url + "/api/conversations/",
        {"kind": "direct", "members": [other.id]},
        {"Authorization": f"Bearer {owner.token}"},
    )
    assert status in (200, 201), body
    return body["id"]


def pair(
    web: DaphneNode, tab: Callable[[], Tab], group: bool = False, open_both: bool = False
) -> tuple[User, Tab, User, Tab, str]:
    """Alice and Bob logged in on /chat/ in two contexts, and a conversation of theirs
    in both lists: a direct one, or a group Alice made; open in both with `open_both`."""
    alice, bob = make_user(web, unique("alice")), make_user(web, unique("bob"))
    a, b = tab(), tab()
    a.login(alice)
    b.login(bob)
    if group:
        cid = web.create_group(alice.token, "team", [bob.id])
        a.conversation(cid).wait_for()
    else:
        cid = a.start_conversation(bob.username)
    b.conversation(cid).wait_for()
    if open_both:
        a.open(cid)
        b.open(cid)
    return alice, a, bob, b, cid


def take_screenshots(out_dir: Path) -> list[Path]:
    """Start a throwaway node, stage a short chat and a feed, and save PNGs of both pages."""
    import tempfile

    from tests.support.live import STAFF_PASSWORD, Stack

    work = Path(tempfile.mkdtemp(prefix="tether-shots-"))
    node = DaphneNode(
        stack=Stack("embedded", f"sqlite:///{work}/tether.sqlite3"), name="demo", log_dir=work
    ).start()
    shots: list[Path] = []
    try:
        alice, bob = make_user(node, "alice"), make_user(node, "bob")
        make_user(node, "carol")
        gen = launch_chromium()
        browser = next(gen)
        try:
            a, b = Tab(browser, node), Tab(browser, node)
            a.login(alice)
            b.login(bob)
            cid = a.start_conversation("bob")
            a.send("Hi Bob! The deploy is done.")
            b.conversation(cid).wait_for()
            b.open(cid)
            b.send("Great, thanks.\nI'll check the dashboards.")
            a.send("<b>tags</b> show as text, always")
            a.wait_bodies(
                [
                    "Hi Bob! The deploy is done.",
                    "Great, thanks.\nI'll check the dashboards.",
                    "<b>tags</b> show as text, always",
                ]
            )
            a.start_conversation("bob, carol")
            a.open(cid)
            b.by_id("composer").press_sequentially("on it, checking now", delay=250)
            a.page.wait_for_function(
                "() => document.querySelector('[data-testid=typing]').textContent"
            )
            shots.append(out_dir / "screenshot-chat.png")
            a.page.screenshot(path=str(shots[-1]))

            staff = "ops"
            node.create_superuser(staff)
            token = staff_token(node, staff, STAFF_PASSWORD)
            f = Tab(browser, node)
            f.login(alice, "/feeds/")
            for topic in ("prices:ETH-USD", "prices:BTC-USD"):
                f.by_id("topic-input").fill(topic)
                f.by_id("topic-input").press("Enter")
                f.page.wait_for_selector(f'[data-topic="{topic}"] [data-testid="recovered"]')
                for i in range(4):
                    http(
                        "POST",
                        f"{node.url}/api/topics/{topic}/publish/",
                        {"data": {"bid": 100 + i * 0.5, "ask": 100.25 + i * 0.5}},
                        {"Authorization": f"Bearer {token}"},
                    )
                f.page.wait_for_selector(
                    f'[data-topic="{topic}"] [data-testid="publication"][data-offset="4"]'
                )
            shots.append(out_dir / "screenshot-feeds.png")
            f.page.screenshot(path=str(shots[-1]))
        finally:
            browser.close()
    finally:
        node.stop()
    return shots


if __name__ == "__main__":
    # .venv/bin/python -m tests.support.browser docs/  (refreshes the README's screenshots)
    import sys

    for path in take_screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(path)


class SilentProxy:
    """A loopback TCP proxy (threads, for sync Playwright tests) that can go silent.

    `mute()` swallows bytes both ways while every TCP connection stays open, as a
    dead NAT entry does: no FIN, no RST, nothing. `unmute()` resets the
    connections that went through the silence (their bytes are lost anyway) and
    forwards again.
    """

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port = 0
        self.muted = threading.Event()
        self.lock = threading.Lock()
        self.pairs: list[tuple[Any, Any, bool]] = []
        self.closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, target_port: int) -> SilentProxy:
        import threading

        self.target_port = target_port
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, upstream, self.muted.is_set()))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                if not self.muted.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def mute(self) -> None:
        with self.lock:
            self.muted.set()
            self.pairs = [(c, u, True) for c, u, _ in self.pairs]

    def unmute(self) -> None:
        import socket
        import struct

        with self.lock:
            stale = [(c, u) for c, u, hit in self.pairs if hit]
            self.pairs = [(c, u, hit) for c, u, hit in self.pairs if not hit]
            self.muted.clear()
        for client, upstream in stale:
            # SO_LINGER 0: reset, as a router that forgot the flow does. shutdown()
            # first: close() alone would wait for the pump thread blocked in recv().
            for s in (client, upstream):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.unmute()
