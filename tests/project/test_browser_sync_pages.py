"""The bundled client follows a paged `sync` (docs/protocol.md, "Paged sync"): in a real
Chromium against a live daphne whose `sync` answers cover one conversation each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.browser import (
    Tab,
    create_conversation,
    make_user,
    tab_factory,
)
from tests.support.live import http
from tests.support.names import unique

pytestmark = pytest.mark.timeout(150)


def test_missed_messages_of_a_conversation_on_a_later_page_arrive(
    browser: Any, embedded_stack, make_node
) -> None:
    node = make_node(embedded_stack, SYNC_PAGE_CONVERSATIONS="1")
    bob = make_user(node, unique("bob"))
    others = [make_user(node, unique("friend")) for _ in range(3)]
    ids = {create_conversation(node, bob, other): other for other in others}
    # The last in id order: on the third page of bob's `sync`.
    cid = max(ids)
    sender = ids[cid]
    tabs = tab_factory(browser, node)
    tab: Callable[[], Tab] = next(tabs)
    try:
        b = tab()
        b.login(bob)
        b.conversation(cid).wait_for()
        b.open(cid)
        b.context.set_offline(True)
        b.wait_state("offline")
        sent = [f"missed {i}" for i in range(1, 4)]
        for n, body in enumerate(sent):
            status, data, _ = http(
                "POST",
                f"{node.url}/api/conversations/{cid}/messages/",
                {"id": f"missed-{n}", "body": body},
                {"Authorization": f"Bearer {sender.token}"},
            )
            assert status == 201, data
        b.context.set_offline(False)
        b.wait_state("connected")
        # Replayed by the third page's answer: no later message shows the gap.
        b.wait_bodies(sent)
        assert [m["seq"] for m in b.messages()] == [1, 2, 3]
    finally:
        next(tabs, None)
