"""Playwright helpers: Debian's Chromium against a live daphne, driven only by data-testid hooks."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.live import DaphneNode, http
from tests.services import require_or_skip

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
