"""The web app in a real Chromium (Playwright) against a live daphne, through the data-testid hooks.

Embedded mode only: the pages and the client do not depend on the mode, and
the server's two-mode behaviour is covered by the socket-level tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.browser import (
    RECONNECT_MS,
    SilentProxy,
    Tab,
    User,
    create_conversation,
    make_user,
    pair,
    seed_messages,
    staff_token,
)
from tests.support.live import STAFF_PASSWORD, DaphneNode, Stack, http, manage
from tests.support.names import unique
from tests.support.waiting import eventually_sync

pytestmark = pytest.mark.timeout(150)
# static/tether/chat.js keeps at most this many messages in the DOM.
MAX_DOM_MESSAGES = 240


@pytest.fixture(scope="module")
def web(embedded_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneNode]:
    """One node for the module (users are unique per test); the restart test restarts it."""
    node = DaphneNode(
        stack=embedded_stack, name="web-ui", log_dir=tmp_path_factory.mktemp("browser")
    )
    node.start()
    yield node
    node.stop()


def rest_bodies(web: DaphneNode, user: User, cid: str) -> list[str]:
    status, data, _ = http(
        "GET",
        f"{web.url}/api/conversations/{cid}/messages/?limit=100",
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert status == 200, data
    return [m["body"] for m in data["messages"]]


def test_two_users_chat_both_ways_with_unread_receipts_typing_presence(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, a, bob, b, cid = pair(web, tab)

    # Bob has not opened the conversation: his list counts what arrives.
    a.send("hello bob")
    a.send("second")
    a.wait_bodies(["hello bob", "second"])
    assert [m["seq"] for m in a.messages()] == [1, 2]
    unread = b.conversation(cid).get_by_test_id("unread")
    b.page.wait_for_function(
        "el => el.textContent === '2'", arg=unread.element_handle(), timeout=20_000
    )
    assert "second" in b.conversation(cid).inner_text()
    # Presence: each sees the other online.
    a.page.wait_for_selector(
        f'[data-testid="presence"][data-user-id="{bob.id}"][data-status="online"]'
    )

    # Opening it shows both, clears the count and sends a receipt Alice sees.
    b.open(cid)
    b.wait_bodies(["hello bob", "second"])
    b.page.wait_for_function("el => el.textContent === '0'", arg=unread.element_handle())
    a.page.wait_for_selector(
        f'[data-testid="message"][data-seq="2"][data-read-by="{bob.username}"]'
    )

    # Typing shows on the other side; Shift+Enter makes a new line, Enter sends.
    composer = b.by_id("composer")
    composer.press_sequentially("hi")
    a.page.wait_for_function(
        "name => document.querySelector('[data-testid=typing]').textContent.includes(name)",
        arg=bob.username,
    )
    composer.press("Shift+Enter")
    composer.press_sequentially("alice")
    composer.press("Enter")
    a.wait_bodies(["hello bob", "second", "hi\nalice"])
    b.wait_bodies(["hello bob", "second", "hi\nalice"])
    assert rest_bodies(web, alice, cid) == ["hello bob", "second", "hi\nalice"]
    assert not a.console_errors and not b.console_errors, (a.console_errors, b.console_errors)


def test_a_system_message_shows_as_the_system_s_not_a_person_s(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    _, a, bob, b, cid = pair(web, tab)
    b.open(cid)
    a.send("before")
    service = unique("svc")
    web.register(service)
    token = manage(web.stack.env(), "issue_token", service, "--scope", "chat").stdout.strip()
    status, sent, _ = http(
        "POST",
        f"{web.url}/api/server/conversations/{cid}/messages/",
        {"id": "notice", "body": "Bob joined the team", "sender": None},
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 201 and sent["sender"] is None, sent
    # Live on an open page, and from history on a page opened afterwards.
    b.wait_bodies(["before", "Bob joined the team"])
    late = tab()
    late.login(bob)
    late.open(cid)
    for page in (b, late):
        page.wait_bodies(["before", "Bob joined the team"])
        shown = page.page.locator('[data-testid="message"][data-seq="2"]')
        assert shown.get_attribute("class") == "msg system"
        assert shown.get_attribute("data-sender") == ""
    assert b.conversation(cid).locator(".preview").inner_text() == "Bob joined the team"
    assert not a.console_errors and not b.console_errors and not late.console_errors


def test_offline_peer_gets_missed_messages_once_in_order(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    _, a, _, b, cid = pair(web, tab)
    b.open(cid)
    b.context.set_offline(True)
    b.wait_state("offline")

    sent = [f"missed {i}" for i in range(1, 6)]
    for body in sent:
        a.send(body)
    a.wait_bodies(sent)

    b.context.set_offline(False)
    b.wait_state("connected")
    b.wait_bodies(sent)
    # A duplicate from the replay would come before a later live message.
    a.send("live after")
    b.wait_bodies([*sent, "live after"])
    assert b.bodies() == [*sent, "live after"]
    assert [m["seq"] for m in b.messages()] == [1, 2, 3, 4, 5, 6]


def test_message_typed_offline_is_delivered_exactly_once(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, a, _, b, cid = pair(web, tab)
    b.open(cid)
    a.context.set_offline(True)
    a.wait_state("offline")
    a.send("typed while offline")
    a.page.wait_for_selector('[data-testid="message"][data-state="pending"]')

    a.context.set_offline(False)
    a.wait_state("connected")
    a.wait_bodies(["typed while offline"])
    b.wait_bodies(["typed while offline"])
    a.send("next")
    b.wait_bodies(["typed while offline", "next"])
    assert b.bodies() == ["typed while offline", "next"]
    assert rest_bodies(web, alice, cid) == ["typed while offline", "next"]


def kept_sends(tab: Tab) -> list[dict[str, Any]]:
    """What the page's durable outbox holds in IndexedDB (static/tether/outbox.js)."""
    return tab.page.evaluate(
        """() => new Promise((resolve, reject) => {
            const open = indexedDB.open("tether-outbox", 1);
            open.onerror = () => reject(open.error);
            open.onsuccess = () => {
                const db = open.result;
                if (!db.objectStoreNames.contains("sends")) return resolve([]);
                const all = db.transaction("sends").objectStore("sends").getAll();
                all.onsuccess = () => resolve(all.result);
                all.onerror = () => reject(all.error);
            };
        })"""
    )


def test_messages_typed_offline_survive_a_closed_tab_and_are_sent_once(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, a, bob, b, cid = pair(web, tab)
    b.open(cid)
    a.send("before going offline")
    b.wait_bodies(["before going offline"])
    a.context.set_offline(True)
    a.wait_state("offline")
    a.send("typed offline 1")
    a.send("typed offline 2")
    a.page.wait_for_selector('[data-testid="message"][data-state="pending"] >> nth=1')
    eventually_sync(lambda: len(kept_sends(a)) == 2, what="both sends kept in IndexedDB")
    assert {k["body"] for k in kept_sends(a)} == {"typed offline 1", "typed offline 2"}
    assert all(k["user"] == alice.id for k in kept_sends(a))
    a.page.close()  # the tab is gone with its memory; the browser profile stays

    a.context.set_offline(False)
    a.page = a.context.new_page()
    a.page.on("pageerror", lambda exc: a.console_errors.append(str(exc)))
    a.page.goto(f"{web.url}/chat/#{cid}")
    a.wait_state("connected")
    b.wait_bodies(["before going offline", "typed offline 1", "typed offline 2"])
    a.wait_bodies(["before going offline", "typed offline 1", "typed offline 2"])
    eventually_sync(lambda: kept_sends(a) == [], what="the outbox emptied by the acks")
    # Once: another page of the same user opening now sends nothing again.
    again = a.context.new_page()
    again.goto(f"{web.url}/chat/")
    again.wait_for_selector('[data-testid="connection-status"][data-state="connected"]')
    a.send("after")
    b.wait_bodies(["before going offline", "typed offline 1", "typed offline 2", "after"])
    assert rest_bodies(web, alice, cid) == [
        "before going offline",
        "typed offline 1",
        "typed offline 2",
        "after",
    ]
    assert b.bodies() == rest_bodies(web, bob, cid)
    assert a.console_errors == []


def test_a_kept_send_already_stored_is_not_shown_or_stored_twice(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    """A tab closed after its send reached the server but before the ack came: the
    next page sends it again with the same id and the server answers `duplicate`."""
    alice, a, _, b, cid = pair(web, tab)
    b.open(cid)
    a.open(cid)
    # What a closed tab leaves behind when its send was stored: the entry, and the
    # message under that id.
    a.page.evaluate(
        """([cid, user]) => new Promise((resolve, reject) => {
            const open = indexedDB.open("tether-outbox", 1);
            open.onsuccess = () => {
                const tx = open.result.transaction("sends", "readwrite");
                tx.objectStore("sends").put({id: "kept-1", user, conversation: cid,
                                             body: "stored once", created: Date.now()});
                tx.oncomplete = resolve;
                tx.onerror = () => reject(tx.error);
            };
        })""",
        [cid, alice.id],
    )
    status, body, _ = http(
        "POST",
        f"{web.url}/api/conversations/{cid}/messages/",
        {"id": "kept-1", "body": "stored once"},
        {"Authorization": f"Bearer {alice.token}"},
    )
    assert status == 201, body
    b.wait_bodies(["stored once"])
    a.page.reload()
    a.wait_state("connected")
    eventually_sync(lambda: kept_sends(a) == [], what="the duplicate ack forgets the entry")
    a.open(cid)
    a.wait_bodies(["stored once"])
    assert a.bodies() == ["stored once"]
    assert rest_bodies(web, alice, cid) == ["stored once"]


def test_server_restart_pages_reconnect_and_resume_without_reload(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, a, _, b, cid = pair(web, tab)
    b.open(cid)
    a.send("before restart")
    b.wait_bodies(["before restart"])
    for t in (a, b):
        t.page.evaluate("window.__notReloaded = true")

    web.stop()
    a.wait_state("reconnecting")
    b.wait_state("reconnecting")
    countdown = a.by_id("connection-status").inner_text()
    assert "Reconnect" in countdown, countdown
    # Sent while the server is down: it waits in the outbox.
    a.send("during restart")
    web.start()

    a.wait_state("connected", timeout=RECONNECT_MS)
    b.wait_state("connected", timeout=RECONNECT_MS)
    b.wait_bodies(["before restart", "during restart"])
    b.send("after restart")
    a.wait_bodies(["before restart", "during restart", "after restart"])
    assert rest_bodies(web, alice, cid) == ["before restart", "during restart", "after restart"]
    for t in (a, b):
        assert t.page.evaluate("window.__notReloaded === true")


def test_xss_body_renders_as_text_under_a_strict_csp(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    _, a, _, b, cid = pair(web, tab)
    b.open(cid)
    evil = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    a.send(evil)
    b.wait_bodies([evil])
    a.wait_bodies([evil])
    for t in (a, b):
        injected = t.page.locator('[data-testid="message-list"] :is(img, script)')
        assert injected.count() == 0
        assert t.dialogs == []

    # The policy: no inline script runs even if markup got in somehow.
    response = b.page.request.get(web.url + "/chat/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
    b.page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.__inline = 1'; document.body.append(s); }"""
    )
    assert b.page.evaluate("window.__inline") is None
    # And the pages themselves carry no inline script or handler attribute.
    for path in ("/chat/", "/feeds/", "/", "/accounts/login/", "/accounts/signup/"):
        html = b.page.request.get(web.url + path).text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert not re.search(r"\son[a-z]+\s*=", html), path


def test_signup_logout_and_login_redirects_and_4401_stops(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    t = tab()
    username = unique("carol")
    t.page.goto(web.url + "/feeds/")
    assert "/accounts/login/" in t.page.url
    t.page.goto(web.url + "/accounts/signup/?next=/feeds/")
    t.page.fill('input[name="username"]', username)
    t.page.fill('input[name="password"]', "a-Long-test-passw0rd")
    t.page.click('button[type="submit"]')
    t.page.wait_for_url(web.url + "/feeds/")
    t.wait_state("connected")
    t.page.goto(web.url + "/chat/")
    t.wait_state("connected")
    # A second tab of the same session: logging out closes its socket with 4401,
    # the one new ticket it tries is refused, and it stops and says so.
    other = t.context.new_page()
    other.goto(web.url + "/feeds/")
    status = other.get_by_test_id("connection-status")
    other.wait_for_selector('[data-testid="connection-status"][data-state="connected"]')
    t.by_id("logout").click()
    t.page.wait_for_url(re.compile(r"/accounts/login/"))
    other.wait_for_selector('[data-testid="connection-status"][data-state="offline"]')
    assert "log in" in status.inner_text().lower()
    t.page.goto(web.url + "/chat/")
    assert "/accounts/login/?next=/chat/" in t.page.url


def test_feeds_page_shows_publications_with_offsets_and_recovery(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    staff = unique("ops")
    web.create_superuser(staff)
    token = staff_token(web, staff, STAFF_PASSWORD)
    viewer = make_user(web, unique("dora"))
    topic = f"prices:{unique('T')}"

    def publish(data: Any) -> int:
        status, body, _ = http(
            "POST",
            f"{web.url}/api/topics/{topic}/publish/",
            {"data": data},
            {"Authorization": f"Bearer {token}"},
        )
        assert status == 201, body
        return body["offset"]

    t = tab()
    t.login(viewer, "/feeds/")
    t.by_id("topic-input").fill(topic)
    t.by_id("topic-input").press("Enter")
    t.page.wait_for_selector('[data-testid="recovered"][data-resumed="false"]')

    offsets = [publish({"bid": 100 + i}) for i in range(3)]
    for offset in offsets:
        t.page.wait_for_selector(f'[data-testid="publication"][data-offset="{offset}"]')

    # Cut the network, publish meanwhile, come back: resumed with `since`, recovered.
    t.context.set_offline(True)
    t.wait_state("offline")
    missed = [publish({"bid": 200 + i}) for i in range(2)]
    t.context.set_offline(False)
    t.wait_state("connected")
    t.page.wait_for_selector(
        '[data-testid="recovered"][data-resumed="true"][data-recovered="true"]'
    )
    for offset in missed:
        t.page.wait_for_selector(f'[data-testid="publication"][data-offset="{offset}"]')
    shown = [
        int(x)
        for x in t.page.eval_on_selector_all(
            '[data-testid="publication"]', "els => els.map(e => e.dataset.offset)"
        )
    ]
    assert sorted(shown) == sorted(offsets + missed) and len(set(shown)) == len(shown), shown


def test_long_conversation_scrolls_with_a_bounded_dom(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, bob = make_user(web, unique("alice")), make_user(web, unique("bob"))
    cid = create_conversation(web, alice, bob)
    seed_messages(web, cid, [alice.id, bob.id], 10_000)
    b = tab()
    b.login(bob)
    b.conversation(cid).wait_for()
    b.open(cid)
    b.page.wait_for_selector('[data-testid="message"][data-seq="10000"]')

    def shown() -> tuple[int, int, int]:
        return tuple(
            b.page.eval_on_selector_all(
                '[data-testid="message-list"] [data-testid="message"]',
                "els => [els.length, Number(els[0].dataset.seq), "
                "Number(els[els.length - 1].dataset.seq)]",
            )
        )

    count, first, _ = shown()
    assert count <= MAX_DOM_MESSAGES
    # Scroll up in steps of a wheel notch per frame for a while, measuring frame
    # times; older pages come from memory or the server and the DOM stays bounded.
    frames = b.page.evaluate(
        """async () => {
            const list = document.querySelector('[data-testid="message-list"]');
            const gaps = [];
            let last = performance.now();
            for (let i = 0; i < 240; i++) {
                list.scrollTop -= 150;
                await new Promise(requestAnimationFrame);
                const now = performance.now();
                gaps.push(now - last);
                last = now;
            }
            return gaps;
        }"""
    )
    count, first_after, last_after = shown()
    assert count <= MAX_DOM_MESSAGES, count
    assert first_after < first - 200, (first, first_after)
    assert last_after - first_after + 1 == count  # contiguous, no holes or repeats
    frames.sort()
    # Generous bounds for a small shared machine: they catch a page that lays out
    # thousands of nodes per frame, not a slow one.
    assert frames[len(frames) // 2] < 50, frames
    assert frames[int(len(frames) * 0.95)] < 250, frames

    # Back to the newest, then a burst of 300 that arrives while the page is open.
    b.page.evaluate(
        """async () => {
            const list = document.querySelector('[data-testid="message-list"]');
            for (let i = 0; i < 400; i++) {
                list.scrollTop = list.scrollHeight;
                await new Promise(requestAnimationFrame);
                if (document.querySelector('[data-testid="message"][data-seq="10000"]')) return;
            }
        }"""
    )
    b.page.wait_for_selector('[data-testid="message"][data-seq="10000"]')
    # At the very bottom the view follows new messages; scrolled up, it would stay put.
    b.page.evaluate(
        """async () => {
            const list = document.querySelector('[data-testid="message-list"]');
            list.scrollTop = list.scrollHeight;
            await new Promise(requestAnimationFrame);
            await new Promise(requestAnimationFrame);
        }"""
    )
    seed_messages(web, cid, [alice.id], 300)
    b.page.wait_for_selector('[data-testid="message"][data-seq="10300"]')
    count, first, last = shown()
    assert count <= MAX_DOM_MESSAGES and last == 10300 and last - first + 1 == count


def test_client_heartbeat_timeout_detects_a_silent_connection(
    browser: Any, web: DaphneNode, make_node: Callable[..., DaphneNode]
) -> None:
    # The page goes through a proxy that can go silent; short heartbeats keep it quick.
    proxy = SilentProxy()
    node = make_node(
        web.stack,
        HEARTBEAT_INTERVAL="2",
        PING_TIMEOUT="4",
        ALLOWED_ORIGINS=proxy.url,
    )
    proxy.start(node.port)
    try:
        alice, bob = make_user(node, unique("alice")), make_user(node, unique("bob"))
        cid = create_conversation(node, alice, bob)
        t = Tab(browser, node)
        t.node = _Via(proxy.url)
        try:
            t.login(bob)
            t.open(cid)
            proxy.mute()
            # Nothing reaches the page, not even the server's 4408: only the
            # client's own timeout (4 s of silence) can notice.
            t.wait_state("reconnecting", timeout=12_000)
            status, body, _ = http(
                "POST",
                f"{node.url}/api/conversations/{cid}/messages/",
                {"id": "while-silent", "body": "sent during the silence"},
                {"Authorization": f"Bearer {alice.token}"},
            )
            assert status == 201, body
            proxy.unmute()
            t.wait_state("connected", timeout=RECONNECT_MS)
            t.wait_bodies(["sent during the silence"])
            assert t.bodies() == ["sent during the silence"]
        finally:
            t.close()
    finally:
        proxy.close()


class _Via:
    """Stands in for a node in Tab: the same pages, reached through the proxy."""

    def __init__(self, url: str) -> None:
        self.url = url
