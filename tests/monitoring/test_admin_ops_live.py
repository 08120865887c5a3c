"""The operators' Django admin on live daphne nodes: kick, nodes, users, chat, namespaces."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from django.contrib.admin.utils import quote as admin_quote

from tests.support.chat import expect_skipping, group, person
from tests.support.live import STAFF_PASSWORD, Browser, DaphneNode, Stack
from tests.support.names import unique
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient


def staff_browser(node: DaphneNode) -> Browser:
    name = unique("admin")
    node.create_superuser(name)
    browser = Browser(node)
    browser.login(name, STAFF_PASSWORD)
    return browser


def get(browser: Browser, path: str) -> tuple[str, str]:
    """(final URL, HTML) of a page, following redirects."""
    with browser.opener.open(browser.node.url + path, timeout=10) as response:
        return response.url, response.read().decode()


def post(browser: Browser, path: str, fields: list[tuple[str, str]]) -> tuple[str, str]:
    """Submit a form (repeated names allowed) with the CSRF token; (final URL, HTML)."""
    data = urlencode([*fields, ("csrfmiddlewaretoken", browser.cookie("csrftoken"))]).encode()
    request = urllib.request.Request(browser.node.url + path, data=data, method="POST")
    try:
        with browser.opener.open(request, timeout=10) as response:
            return response.url, response.read().decode()
    except urllib.error.HTTPError as error:
        raise AssertionError(f"POST {path}: {error.code}\n{error.read().decode()[:2000]}") from None


def row(html: str, text: str) -> str:
    """The table row of a changelist that mentions `text` ("" if none does)."""
    return next((chunk for chunk in html.split("<tr")[1:] if text in chunk), "")


def user_id(stack: Stack, username: str) -> int:
    return stack.sql("SELECT id FROM accounts_user WHERE username = %s", username)[0][0]


def token_id(stack: Stack, token: str) -> int:
    return stack.sql("SELECT id FROM accounts_apitoken WHERE prefix = %s", token[:10])[0][0]


async def still_open(client: WsClient) -> bool:
    """The socket answers a ping, so nothing closed it."""
    await client.send({"type": "ping"})
    return (await expect_skipping(client, "pong"))["type"] == "pong"


class FormFields(HTMLParser):
    """What a browser would submit from one form: fields with their current values."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.fields: list[tuple[str, str]] = []
        self.select: str | None = None
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "disabled" in a:
            return
        name = a.get("name", "")
        if tag == "input" and name and a.get("type", "text") not in ("submit", "button", "file"):
            if a.get("type") not in ("checkbox", "radio"):
                self.fields.append((name, a.get("value", "")))
            elif "checked" in a:
                self.fields.append((name, a.get("value", "on")))
        elif tag == "select":
            self.select = name
        elif tag == "option" and self.select and "selected" in a:
            self.fields.append((self.select, a.get("value", "")))
        elif tag == "textarea" and name:
            self.textarea = name
            self.fields.append((name, ""))

    def handle_data(self, data: str) -> None:
        if self.textarea:
            self.fields[-1] = (self.textarea, self.fields[-1][1] + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None


def form_fields(html: str, form_id: str) -> list[tuple[str, str]]:
    parser = FormFields(form_id)
    parser.feed(html)
    assert parser.fields, f"no form #{form_id}"
    return parser.fields


async def test_disconnect_action_closes_a_socket_held_by_the_other_node(two_nodes) -> None:
    a, b = two_nodes
    browser = staff_browser(a)
    watched = person(a, "watched")
    on_a = await watched.socket(a, "chat")
    on_b = await watched.socket(b, "stream")
    ids = {
        cid: name
        for cid, name in a.stack.sql(
            "SELECT c.id, n.name FROM realtime_liveconnection c "
            "JOIN realtime_node n ON n.id = c.node_id WHERE c.user_id = %s",
            watched.id,
        )
    }
    id_b = next(cid for cid, name in ids.items() if name == "node-b")
    id_a = next(cid for cid, name in ids.items() if name == "node-a")
    node_b = a.stack.sql("SELECT id FROM realtime_node WHERE name = 'node-b'")[0][0]

    # Filters: by user (for any number of users), node, endpoint; search by username.
    _, html = get(browser, f"/admin/realtime/liveconnection/?user={watched.id}")
    assert id_a in row(html, id_a) and "node-a" in row(html, id_a) and id_b in html
    assert "idle" in html and f"{watched.username}</a>" in html
    _, html = get(browser, f"/admin/realtime/liveconnection/?user={watched.id}&endpoint=stream")
    assert id_b in html and id_a not in html
    _, html = get(browser, f"/admin/realtime/liveconnection/?node__id__exact={node_b}")
    assert id_b in html and id_a not in html
    _, html = get(browser, f"/admin/realtime/liveconnection/?q={watched.username}")
    assert id_a in html and id_b in html
    assert "Disconnect selected (close 4403)" in html
    assert 'value="delete_selected"' not in html  # records are never deleted by hand

    # Through node a's admin, kick only the socket node b holds.
    url, html = post(
        browser,
        "/admin/realtime/liveconnection/",
        [("action", "disconnect_selected"), ("_selected_action", id_b), ("index", "0")],
    )
    assert url.endswith("/admin/realtime/liveconnection/")
    assert "Asked 1 connection(s) to close with 4403" in html
    assert await on_b.close_code() == 4403
    await eventually(
        lambda: a.stack.sql("SELECT 1 FROM realtime_liveconnection WHERE id = %s", id_b) == [],
        what="node b to remove the kicked socket's record",
    )
    assert await still_open(on_a)
    _, html = get(browser, f"/admin/realtime/liveconnection/?user={watched.id}")
    assert id_a in html and id_b not in html
    await on_a.close()


def test_the_live_list_is_read_only(production_stack: Stack, make_node) -> None:
    node = make_node(production_stack)
    browser = staff_browser(node)
    assert browser.request("GET", "/admin/realtime/liveconnection/add/") == 403
    assert browser.request("GET", "/admin/realtime/node/add/") == 403
    assert browser.request("GET", "/admin/realtime/message/add/") == 403
    assert browser.request("GET", "/admin/realtime/conversation/add/") == 403


async def test_nodes_show_alive_or_silent_and_live_connection_counts(
    production_stack: Stack, make_node
) -> None:
    node = make_node(production_stack)
    browser = staff_browser(node)
    stack = node.stack
    token = node.register(unique("counted"))
    sockets = [await WsClient.open(f"{node.ws_url}/ws/chat/", token=token) for _ in range(2)]
    for client in sockets:
        await client.welcome()

    _, html = get(browser, "/admin/realtime/node/")
    mine = row(html, f">{node.name}<")
    assert 'alt="True"' in mine  # alive
    assert re.search(r'node__id__exact=\d+">2</a>', mine), mine  # counted from the records

    ghost = unique("ghost")

    def shown_silent() -> bool:
        # A node past the silence limit is what the reapers remove, so a live node may
        # reap the fake one between insert and render: put it back and look again.
        stack.sql("DELETE FROM realtime_node WHERE name = %s", ghost)
        stack.sql(
            "INSERT INTO realtime_node (name, host, pid, started_at, last_heartbeat, "
            "connection_count, stats) VALUES (%s, 'gone', 1, now() - interval '1 day', "
            "now() - interval '1 hour', 7, '{}')",
            ghost,
        )
        _, html = get(browser, "/admin/realtime/node/?status=silent")
        silent = row(html, f">{ghost}<")
        return bool(silent) and 'alt="False"' in silent and node.name not in html

    await eventually(shown_silent, what="the fake node listed as silent")
    _, html = get(browser, "/admin/realtime/node/?status=alive")
    assert node.name in html and ghost not in html
    stack.sql("DELETE FROM realtime_node WHERE name = %s", ghost)
    for client in sockets:
        await client.close()


async def test_user_page_lists_live_connections_and_tokens(
    production_stack: Stack, make_node
) -> None:
    node = make_node(production_stack)
    browser = staff_browser(node)
    name = unique("owner")
    token = node.register(name)
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token)
    cid = (await client.welcome())["connection_id"]
    uid = user_id(node.stack, name)

    _, html = get(browser, f"/admin/accounts/user/{uid}/change/")
    assert "live connections" in html.lower()
    assert cid in html and node.name in html
    assert token[:10] in html  # the token's prefix, never the token
    assert token not in html
    await client.close()


async def delete_in_single_view(browser: Browser, uid: int, tid: int) -> None:
    url, html = post(browser, f"/admin/accounts/apitoken/{tid}/delete/", [("post", "yes")])
    assert url.endswith("/admin/accounts/apitoken/") and "deleted successfully" in html


async def delete_in_bulk(browser: Browser, uid: int, tid: int) -> None:
    _, html = post(
        browser,
        "/admin/accounts/apitoken/",
        [("action", "delete_selected"), ("_selected_action", str(tid)), ("post", "yes")],
    )
    assert "Successfully deleted 1 API token" in html


async def delete_in_user_inline(browser: Browser, uid: int, tid: int) -> None:
    path = f"/admin/accounts/user/{uid}/change/"
    _, html = get(browser, path)
    fields = form_fields(html, "user_form")
    index = next(
        name.split("-")[1]
        for name, value in fields
        if re.fullmatch(r"api_tokens-\d+-id", name) and value == str(tid)
    )
    url, html = post(browser, path, [*fields, (f"api_tokens-{index}-DELETE", "on"), ("_save", "")])
    errors = re.findall(
        r'class="errorlist[^"]*"[^>]*>.*?</ul>|class="errornote".*?</p>', html, re.S
    )
    assert url.endswith("/admin/accounts/user/"), errors


@pytest.mark.parametrize(
    "delete",
    [delete_in_single_view, delete_in_bulk, delete_in_user_inline],
    ids=lambda f: f.__name__,
)
async def test_deleting_a_token_in_the_admin_closes_its_sockets_with_4401(
    node: DaphneNode, delete
) -> None:
    browser = staff_browser(node)
    name = unique("revoked")
    revoked = node.register(name)
    kept = node.register(name)  # a second token of the same user
    on_revoked = await WsClient.open(f"{node.ws_url}/ws/chat/", token=revoked)
    on_kept = await WsClient.open(f"{node.ws_url}/ws/chat/", token=kept)
    await on_revoked.welcome()
    await on_kept.welcome()
    tid = token_id(node.stack, revoked)

    await delete(browser, user_id(node.stack, name), tid)
    assert await on_revoked.close_code() == 4401
    assert node.stack.sql("SELECT 1 FROM accounts_apitoken WHERE id = %s", tid) == []
    assert await still_open(on_kept)
    await on_kept.close()


async def test_conversations_and_messages_are_searchable(
    production_stack: Stack, make_node
) -> None:
    node = make_node(production_stack)
    browser = staff_browser(node)
    alice, bob = person(node, "alice"), person(node, "bob")
    title = unique("standup")
    conversation = group(node, alice, bob, title=title)
    word = unique("needle")
    for body in (f"first {word}", f"second {word}"):
        status, sent = alice.api(
            node,
            "POST",
            f"/api/conversations/{conversation}/messages/",
            {"id": unique(), "body": body},
        )
        assert status == 201, sent

    for query in (bob.username, title):
        _, html = get(browser, f"/admin/realtime/conversation/?q={query}")
        assert conversation in html, query
    _, html = get(browser, f"/admin/realtime/conversation/?q={unique('nobody')}")
    assert conversation not in html
    _, html = get(browser, f"/admin/realtime/conversation/?kind=direct&q={title}")
    assert conversation not in html

    _, html = get(browser, f"/admin/realtime/conversation/{conversation}/change/")
    assert bob.username in html and 'name="title"' in html
    assert 'name="last_seq"' not in html and 'name="kind"' not in html

    _, html = get(browser, f"/admin/realtime/message/?q={word}")
    assert html.index(f"first {word}") < html.index(f"second {word}")  # by conversation, seq
    _, html = get(browser, f"/admin/realtime/message/?q={alice.username}")
    assert f"first {word}" in html
    _, html = get(browser, f"/admin/realtime/message/?q={bob.username}")
    assert word not in html  # bob sent nothing
    _, html = get(browser, f"/admin/realtime/message/?conversation={conversation}")
    assert f"second {word}" in html and title in html
    message_id = production_stack.sql(
        "SELECT id FROM realtime_message WHERE conversation_id = %s AND seq = 1", conversation
    )[0][0]
    # Quoted as the admin's own links are: an id such as `m_22…` read raw is `m"…`.
    _, html = get(browser, f"/admin/realtime/message/{admin_quote(message_id)}/change/")
    assert f"first {word}" in html and 'name="body"' not in html  # read-only


async def test_namespaces_page_lists_the_configured_namespaces(
    production_stack: Stack, make_node
) -> None:
    node = make_node(production_stack)
    browser = staff_browser(node)
    _, html = get(browser, "/admin/")
    assert 'href="/admin/realtime/node/namespaces/"' in html
    _, html = get(browser, "/admin/realtime/node/namespaces/")
    rows = {name: row(html, f"<code>{name}:") for name in ("prices", "user", "ops")}
    assert "1000 publications" in rows["prices"] and "3600 s" in rows["prices"]
    assert "open" in rows["prices"]
    assert "100 publications" in rows["user"] and "86400 s" in rows["user"]
    assert "own" in rows["user"]
    assert "staff" in rows["ops"]

    custom = make_node(
        production_stack,
        TOPIC_NAMESPACES='{"alerts": {"history_size": 5, "history_ttl": 60, "access": "staff"}}',
    )
    _, html = get(staff_browser(custom), "/admin/realtime/node/namespaces/")
    alerts = row(html, "<code>alerts:")
    assert "5 publications" in alerts and "60 s" in alerts and "staff" in alerts
    assert "<code>prices:" not in html

    outsider = unique()
    node.register(outsider)
    stranger = Browser(node)
    stranger.login(outsider)
    url, _ = get(stranger, "/admin/realtime/node/namespaces/")
    assert "/admin/login/" in url
