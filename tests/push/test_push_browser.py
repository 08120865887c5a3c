"""Web Push in a real Chromium (Playwright, Debian's /usr/bin/chromium): the chat page's
notifications toggle subscribes (and off unsubscribes; so does logging out) and the
server stores the subscription; a push the server sent (to the fake push service,
which decrypts it) is delivered to the service worker through the DevTools protocol
(`ServiceWorker.deliverPushMessage`), which shows a notification with the sender,
the text and a group's title, and stays silent while a Tether page is visible; the
notification's click opens the conversation, by navigating a Tether tab there or in
the open chat tab itself.

Two stand-ins, because a test machine has no Google push service: Playwright's
contexts are incognito-like, where Chromium refuses `pushManager.subscribe`
outright (crbug.com/41124656), so the page's `PushManager` is given the fake push
service's subscription (everything around it, the permission, the VAPID key, the
POST, is the page's own); and no headless path clicks a system notification, so
the worker gets a `notificationclick` dispatched in its own global scope with the
notification it showed (Playwright's handle on the worker), and runs its real
handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.browser import Tab, launch_chromium, make_user, tab_factory
from tests.support.live import DaphneNode, Stack, http
from tests.support.names import unique
from tests.support.pushservice import PushService

pytestmark = pytest.mark.timeout(150)

FAKE_PUSH_MANAGER = """
(subscription) => {
  let current = null;
  PushManager.prototype.subscribe = async function (options) {
    const key = new Uint8Array(options.applicationServerKey).buffer;
    current = {
      endpoint: subscription.endpoint,
      options: { applicationServerKey: key, userVisibleOnly: options.userVisibleOnly },
      toJSON: () => subscription,
      unsubscribe: async () => { current = null; return true; },
    };
    window.__tetherSubscribedWith = btoa(String.fromCharCode(...new Uint8Array(key)))
      .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
    return current;
  };
  PushManager.prototype.getSubscription = async function () { return current; };
}
"""

NOTIFICATIONS = """
async () => {
  const registration = await navigator.serviceWorker.ready;
  const shown = await registration.getNotifications();
  return shown.map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
}
"""

CLICK = """
async () => {
  const [notification] = await self.registration.getNotifications();
  self.dispatchEvent(new NotificationEvent("notificationclick", { notification }));
  return notification.data.conversation;
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


@pytest.fixture
def service() -> Iterator[PushService]:
    s = PushService().start()
    yield s
    s.stop()


@pytest.fixture
def web(embedded_stack: Stack, make_node: Callable[..., DaphneNode]) -> DaphneNode:
    return make_node(embedded_stack, PUSH_ENDPOINT_ALLOWLIST="http://127.0.0.1:")


@pytest.fixture
def tab(browser: Any, web: DaphneNode) -> Iterator[Callable[[], Tab]]:
    yield from tab_factory(browser, web)


def registration_id(tab: Tab) -> tuple[Any, str]:
    """A DevTools session on the tab and its service worker registration's id."""
    cdp = tab.context.new_cdp_session(tab.page)
    found: dict[str, str] = {}

    def updated(event: dict[str, Any]) -> None:
        for r in event["registrations"]:
            if r["scopeURL"] == tab.node.url + "/" and not r.get("isDeleted"):
                found["id"] = r["registrationId"]

    cdp.on("ServiceWorker.workerRegistrationUpdated", updated)
    cdp.send("ServiceWorker.enable")
    for _ in range(100):  # Playwright's events arrive while it is waiting on something
        if "id" in found:
            return cdp, found["id"]
        tab.page.wait_for_timeout(100)
    raise AssertionError(f"no service worker registration for {tab.node.url}/")


def test_toggle_subscribes_and_a_push_shows_a_notification_that_opens_the_conversation(
    web: DaphneNode, tab: Callable[[], Tab], service: PushService
) -> None:
    alice, bob = make_user(web, unique("alice")), make_user(web, unique("bob"))
    _, subscription = service.subscription()
    b = tab()
    b.context.grant_permissions(["notifications"], origin=web.url)
    b.context.add_init_script(f"({FAKE_PUSH_MANAGER})({json.dumps(subscription.to_json())})")
    b.login(bob)
    toggle = b.by_id("notifications-toggle")
    b.page.wait_for_selector('[data-testid="notifications-toggle"][data-state="off"]')
    toggle.click()
    b.page.wait_for_selector('[data-testid="notifications-toggle"][data-state="on"]')
    _, key, _ = http(
        "GET", web.url + "/api/push/key/", headers={"Authorization": f"Bearer {bob.token}"}
    )
    assert b.page.evaluate("window.__tetherSubscribedWith") == key["public_key"]

    def stored() -> list[tuple[str]]:
        return web.stack.sql(
            "SELECT endpoint FROM realtime_pushsubscription WHERE user_id = %s", bob.id
        )

    assert stored() == [(subscription.endpoint,)]
    # Off: the page deletes the subscription on the server and unsubscribes; on again.
    toggle.click()
    b.page.wait_for_selector('[data-testid="notifications-toggle"][data-state="off"]')
    assert stored() == []
    toggle.click()
    b.page.wait_for_selector('[data-testid="notifications-toggle"][data-state="on"]')
    assert stored() == [(subscription.endpoint,)]
    cdp, registration = registration_id(b)

    cid = web.create_group(alice.token, "Launch crew", [bob.id])

    def post(text: str) -> None:
        status, body, _ = http(
            "POST",
            f"{web.url}/api/conversations/{cid}/messages/",
            {"id": unique("m"), "body": text},
            {"Authorization": f"Bearer {alice.token}"},
        )
        assert status == 201, body

    def pushed(n: int) -> dict[str, Any]:
        """The n-th push the server sent to bob's subscription, as decrypted."""
        service.wait_for(lambda s: len(s.of(token)) >= n, 15, f"push {n}")
        payload = service.of(token)[n - 1].payload
        assert payload is not None, "the push decrypts with the subscription's keys"
        return payload

    token = subscription.endpoint.rsplit("/", 1)[1]

    def away(page: Any) -> None:
        """Leave the origin and wait until bob has no chat socket left; the worker stays."""
        page.goto("about:blank")
        for _ in range(100):
            if not web.stack.sql(
                "SELECT 1 FROM realtime_liveconnection WHERE user_id = %s", bob.id
            ):
                return
            page.wait_for_timeout(100)
        raise AssertionError("bob's chat socket is still recorded")

    # Bob has no chat socket anywhere: the server pushes.
    away(b.page)
    post("first, while nobody looks")
    first = pushed(1)
    assert first["sender"]["username"] == alice.username and first["conversation"] == cid

    # A visible Tether page: the worker stays silent.
    watcher = b.context.new_page()
    watcher.goto(web.url + "/")
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": web.url, "registrationId": registration, "data": json.dumps(first)},
    )
    watcher.wait_for_timeout(1500)
    assert watcher.evaluate(NOTIFICATIONS) == []

    # No Tether page visible: a notification with the group's title, sender and text.
    watcher.goto("about:blank")
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": web.url, "registrationId": registration, "data": json.dumps(first)},
    )
    watcher.goto(web.url + "/")
    shown = watcher.evaluate(NOTIFICATIONS)
    for _ in range(50):
        if shown:
            break
        watcher.wait_for_timeout(200)
        shown = watcher.evaluate(NOTIFICATIONS)
    assert shown == [
        {
            "title": "Launch crew",
            "body": f"{alice.username}: first, while nobody looks",
            "tag": f"tether:{cid}",
            "data": {"conversation": cid, "seq": first["seq"], "message_id": first["message_id"]},
        }
    ]

    # The click opens the conversation in the Tether tab there is.
    worker = next(w for w in b.context.service_workers if w.url == web.url + "/sw.js")
    assert worker.evaluate(CLICK) == cid
    watcher.wait_for_url(f"{web.url}/chat/*", timeout=15_000)
    watcher.wait_for_selector(
        f'[data-testid="conversation"][data-conversation-id="{cid}"].active', timeout=15_000
    )
    assert watcher.evaluate(NOTIFICATIONS) == []  # the click closed it

    # A direct message (the sender's name as title) clicked while a chat tab is open:
    # that tab opens it in place, without loading the page again.
    status, direct, _ = http(
        "POST",
        web.url + "/api/conversations/",
        {"kind": "direct", "members": [bob.id]},
        {"Authorization": f"Bearer {alice.token}"},
    )
    assert status in (200, 201), direct
    away(watcher)
    cid = direct["id"]
    status, _, _ = http(
        "POST",
        f"{web.url}/api/conversations/{cid}/messages/",
        {"id": unique("m"), "body": "just you"},
        {"Authorization": f"Bearer {alice.token}"},
    )
    assert status == 201
    second = pushed(2)
    assert second["conversation"] == cid
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": web.url, "registrationId": registration, "data": json.dumps(second)},
    )
    watcher.goto(web.url + "/chat/")
    watcher.wait_for_selector('[data-testid="connection-status"][data-state="connected"]')
    watcher.wait_for_selector(f'[data-testid="conversation"][data-conversation-id="{cid}"]')
    shown = watcher.evaluate(NOTIFICATIONS)
    assert [(n["title"], n["body"]) for n in shown] == [(alice.username, "just you")]
    watcher.evaluate("() => { window.__samePage = true; }")
    assert worker.evaluate(CLICK) == cid
    watcher.wait_for_selector(
        f'[data-testid="conversation"][data-conversation-id="{cid}"].active', timeout=15_000
    )
    assert watcher.evaluate("() => window.__samePage") is True


def test_toggle_shows_denied_when_the_browser_refuses(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    carol = make_user(web, unique("carol"))
    t = tab()
    t.login(carol)
    t.context.clear_permissions()
    t.page.evaluate(
        "() => Object.defineProperty(Notification, 'permission', {get: () => 'denied'})"
    )
    t.page.evaluate("() => { Notification.requestPermission = async () => 'denied'; }")
    t.by_id("notifications-toggle").click()
    t.page.wait_for_selector('[data-testid="notifications-toggle"][data-state="denied"]')


def test_logging_out_turns_this_browsers_pushes_off(
    web: DaphneNode, tab: Callable[[], Tab], service: PushService
) -> None:
    dave = make_user(web, unique("dave"))
    _, subscription = service.subscription()
    t = tab()
    t.context.grant_permissions(["notifications"], origin=web.url)
    t.context.add_init_script(f"({FAKE_PUSH_MANAGER})({json.dumps(subscription.to_json())})")
    t.login(dave)
    t.by_id("notifications-toggle").click()
    t.page.wait_for_selector('[data-testid="notifications-toggle"][data-state="on"]')

    def stored() -> int:
        return web.stack.sql(
            "SELECT count(*) FROM realtime_pushsubscription WHERE user_id = %s", dave.id
        )[0][0]

    assert stored() == 1
    t.by_id("logout").click()
    t.page.wait_for_url(f"{web.url}/accounts/login/**")
    assert stored() == 0
