"""Conversation events in the web app (PROTOCOL 10), in a real Chromium through the
data-testid hooks: edit, delete, react, reply (the quote scrolls to its message,
loading history), attach by button, drag and drop and paste with upload progress,
receipts after a reload."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.browser import Tab, User, pair, seed_messages
from tests.support.live import DaphneNode, Stack, http
from tests.support.names import unique

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def web(embedded_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneNode]:
    node = DaphneNode(
        stack=embedded_stack, name="web-events", log_dir=tmp_path_factory.mktemp("events")
    )
    node.start()
    yield node
    node.stop()


def png(width: int = 3, height: int = 2) -> bytes:
    """A real PNG (red pixels), so the browser can decode the thumbnail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def message(tab: Tab, body: str) -> Any:
    return tab.page.locator(
        '[data-testid="message-list"] [data-testid="message"][data-state="sent"]',
        has=tab.page.locator(".body", has_text=body),
    ).last


def action(tab: Tab, body: str, testid: str) -> None:
    """Hover the message (its actions show on hover or focus), then click one."""
    target = message(tab, body)
    target.hover()
    target.get_by_test_id(testid).click()


def rows(web: DaphneNode, user: User, cid: str) -> list[dict[str, Any]]:
    status, data, _ = http(
        "GET",
        f"{web.url}/api/conversations/{cid}/messages/?limit=100",
        headers={"Authorization": f"Bearer {user.token}"},
    )
    assert status == 200, data
    return data["messages"]


def test_edit_and_delete_own_messages_show_on_both_sides(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, a, _, b, cid = pair(web, tab, open_both=True)
    a.send("helo wrld")
    b.wait_bodies(["helo wrld"])
    # Bob may reply and react to Alice's message, not edit or delete it.
    mine_on_b = message(b, "helo wrld")
    mine_on_b.hover()
    assert mine_on_b.get_by_test_id("message-reply").is_visible()
    assert mine_on_b.get_by_test_id("message-edit").count() == 0
    assert mine_on_b.get_by_test_id("message-delete").count() == 0

    action(a, "helo wrld", "message-edit")
    composer = a.by_id("composer")
    assert composer.input_value() == "helo wrld"
    composer.fill("hello world")
    composer.press("Enter")
    for t in (a, b):
        t.page.wait_for_selector('[data-testid="message"][data-edited="true"] >> text=hello world')
    assert a.bodies() == ["hello world"] and b.bodies() == ["hello world"]

    a.send("take this back")
    b.wait_bodies(["hello world", "take this back"])
    action(a, "take this back", "message-delete")
    for t in (a, b):
        t.page.wait_for_selector('[data-testid="message"][data-deleted="true"]')
        deleted = t.page.locator('[data-testid="message"][data-deleted="true"]')
        assert deleted.locator(".body").text_content() == ""
        assert "message deleted" in deleted.inner_text()
        assert deleted.get_by_test_id("message-edit").count() == 0
    assert [(m["kind"], m["body"]) for m in rows(web, alice, cid) if m["kind"] == "message"] == [
        ("message", "hello world"),
        ("message", ""),
    ]
    # After a reload the page rebuilds the same from the server.
    b.page.reload()
    b.wait_state("connected")
    b.open(cid)
    b.page.wait_for_selector('[data-testid="message"][data-deleted="true"]')
    assert b.page.locator('[data-testid="message"][data-edited="true"]').count() == 1
    assert not a.console_errors and not b.console_errors, (a.console_errors, b.console_errors)


def test_a_group_s_creator_deletes_a_member_s_message(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    _, a, _, b, _ = pair(web, tab, group=True, open_both=True)
    b.send("off topic")
    a.wait_bodies(["off topic"])
    action(a, "off topic", "message-delete")
    for t in (a, b):
        t.page.wait_for_selector('[data-testid="message"][data-deleted="true"]')


def test_reactions_with_picker_counts_and_names(web: DaphneNode, tab: Callable[[], Tab]) -> None:
    alice, a, bob, b, cid = pair(web, tab, open_both=True)
    a.send("lunch?")
    b.wait_bodies(["lunch?"])
    action(b, "lunch?", "message-react")
    b.page.locator('[data-testid="reaction-option"][data-emoji="👍"]').click()
    chip = '[data-testid="reaction"][data-emoji="👍"]'
    for t in (a, b):
        t.page.wait_for_selector(f'{chip}[data-count="1"][data-users="{bob.username}"]')
    # Alice adds hers by clicking the chip: named in the order they reacted.
    a.page.locator(chip).click()
    both = f"{bob.username}, {alice.username}"
    for t in (a, b):
        t.page.wait_for_selector(f'{chip}[data-count="2"][data-users="{both}"]')
    # Bob takes his back.
    b.page.locator(chip).click()
    for t in (a, b):
        t.page.wait_for_selector(f'{chip}[data-count="1"][data-users="{alice.username}"]')
    (lunch,) = [m for m in rows(web, alice, cid) if m["kind"] == "message"]
    assert lunch["reactions"] == {"👍": [alice.id]}
    assert not a.console_errors and not b.console_errors, (a.console_errors, b.console_errors)


def test_reply_quotes_and_the_quote_scrolls_to_a_message_far_back(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, a, bob, b, cid = pair(web, tab, open_both=True)
    a.send("the question")
    b.wait_bodies(["the question"])
    action(b, "the question", "message-reply")
    assert "the question" in b.by_id("composer-context").inner_text()
    b.send("the answer")
    (question,) = [m for m in rows(web, alice, cid) if m["body"] == "the question"]
    for t in (a, b):
        t.wait_bodies(["the question", "the answer"])
        quote = message(t, "the answer").get_by_test_id("reply-quote")
        assert quote.get_attribute("data-reply-to") == question["message_id"]
        assert "the question" in quote.inner_text()

    # Far back: 400 messages after it, then a reply to it; a fresh page holds only
    # the newest ones until the quote is clicked.
    seed_messages(web, cid, [alice.id, bob.id], 400)
    status, body, _ = http(
        "POST",
        f"{web.url}/api/conversations/{cid}/messages/",
        {"id": unique("r"), "body": "back to the question", "reply_to": question["message_id"]},
        {"Authorization": f"Bearer {bob.token}"},
    )
    assert status == 201, body
    a.page.reload()
    a.wait_state("connected")
    a.open(cid)
    a.wait_bodies(["back to the question"])
    target = f'[data-testid="message"][data-message-id="{question["message_id"]}"]'
    assert a.page.locator(target).count() == 0
    message(a, "back to the question").get_by_test_id("reply-quote").click()
    a.page.wait_for_selector(target)
    assert a.page.locator(target).is_visible()
    in_view = a.page.evaluate(
        """sel => { const r = document.querySelector(sel).getBoundingClientRect();
                    const pane = document.querySelector('[data-testid=message-list]')
                        .getBoundingClientRect();
                    return r.top >= pane.top && r.bottom <= pane.bottom; }""",
        target,
    )
    assert in_view
    assert not a.console_errors, a.console_errors


def test_attach_by_button_drop_and_paste_with_progress_thumbnails_and_links(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    alice, a, bob, b, cid = pair(web, tab, open_both=True)
    image, text = png(), b"meeting notes\n" * 50
    a.by_id("attach").set_input_files(
        [
            {"name": "red.png", "mimeType": "image/png", "buffer": image},
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": text},
        ]
    )
    progress = a.page.locator('[data-testid="upload-progress"]')
    a.page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=upload-progress]')]"
        ".filter(p => p.value === 100).length === 2"
    )
    assert progress.count() == 2
    a.by_id("composer").press("Enter")  # no text: the files alone
    for t in (a, b):
        t.page.wait_for_selector('[data-testid="message"] [data-testid="attachment"] >> nth=1')
        shown = t.page.locator('[data-testid="attachment"]')
        # In the order they were uploaded (PROTOCOL 10): here both at once.
        assert sorted(
            (shown.nth(i).get_attribute("data-name"), shown.nth(i).get_attribute("data-size"))
            for i in range(2)
        ) == [("notes.txt", str(len(text))), ("red.png", str(len(image)))]
        # The image is a thumbnail the browser decoded from the server's bytes.
        t.page.wait_for_function(
            "() => { const i = document.querySelector('[data-testid=attachment] img');"
            " return i && i.complete && i.naturalWidth === 3; }"
        )
        notes = t.page.locator('[data-testid="attachment"][data-name="notes.txt"]')
        assert notes.get_attribute("download") == "notes.txt"
    assert progress.count() == 0  # the staged uploads are cleared once sent

    # Drag and drop onto the pane, and a paste into the composer.
    for how in ("drop", "paste"):
        a.page.evaluate(
            """how => {
                const dt = new DataTransfer();
                dt.items.add(new File([`by ${how}`], `${how}.txt`, {type: "text/plain"}));
                if (how === "drop") {
                    const pane = document.getElementById("pane");
                    pane.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true,
                                                                 cancelable: true}));
                    pane.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                             cancelable: true}));
                } else {
                    document.querySelector('[data-testid=composer]').dispatchEvent(
                        new ClipboardEvent("paste", {clipboardData: dt, bubbles: true,
                                                     cancelable: true}));
                }
            }""",
            how,
        )
        a.page.wait_for_function(
            "() => { const p = document.querySelector('[data-testid=upload-progress]');"
            " return p && p.value === 100; }"
        )
        a.send(f"sent by {how}")
        b.page.wait_for_selector(f'[data-testid="attachment"][data-name="{how}.txt"]')
    sent = [m for m in rows(web, alice, cid) if m["kind"] == "message"]
    assert [sorted(x["name"] for x in m["attachments"]) for m in sent] == [
        ["notes.txt", "red.png"],
        ["drop.txt"],
        ["paste.txt"],
    ]
    (red,) = [x for x in sent[0]["attachments"] if x["name"] == "red.png"]
    assert red["content_type"] == "image/png"

    # Deleting the message takes its files: gone from both pages and the server.
    url = red["url"]
    a.page.locator('[data-testid="message"]', has=a.page.locator('[data-name="red.png"]')).hover()
    a.page.locator(
        '[data-testid="message"]', has=a.page.locator('[data-name="red.png"]')
    ).get_by_test_id("message-delete").click()
    for t in (a, b):
        t.page.wait_for_selector('[data-testid="message"][data-deleted="true"]')
        assert t.page.locator('[data-testid="attachment"][data-name="red.png"]').count() == 0
    status, _, _ = http("GET", web.url + url, headers={"Authorization": f"Bearer {bob.token}"})
    assert status == 404
    assert not a.console_errors and not b.console_errors, (a.console_errors, b.console_errors)


def test_an_oversized_upload_is_refused_with_a_clear_error(
    web: DaphneNode, tab: Callable[[], Tab]
) -> None:
    _, a, _, _, _ = pair(web, tab, open_both=True)
    limit = 10 * 1024 * 1024
    a.by_id("attach").set_input_files(
        [
            {
                "name": "huge.bin",
                "mimeType": "application/octet-stream",
                "buffer": b"\0" * (limit + 1),
            }
        ]
    )
    a.page.wait_for_function(
        "() => document.getElementById('composer-error').textContent.includes('huge.bin')"
    )
    assert a.page.locator('[data-testid="message"]').count() == 0


def test_receipts_show_after_a_reload(web: DaphneNode, tab: Callable[[], Tab]) -> None:
    _, a, bob, b, cid = pair(web, tab, open_both=True)
    a.send("did you read this?")
    b.wait_bodies(["did you read this?"])
    a.page.wait_for_selector(f'[data-testid="message"][data-read-by="{bob.username}"]')
    a.page.reload()
    a.wait_state("connected")
    a.open(cid)
    a.page.wait_for_selector(f'[data-testid="message"][data-read-by="{bob.username}"]')
