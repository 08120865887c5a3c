"""A `sync` answer stays bounded however many conversations the user is in: it covers
one page of them, and following `next` gives every one exactly once (docs/protocol.md,
"Paged sync")."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from realtime.chat import sends
from tests.support.chat import expect_skipping
from tests.support.chat import group as live_group
from tests.support.chat import person as live_person
from tests.support.focused import WAIT, chat, group, person
from tests.support.names import unique

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = 4
MESSAGES_EACH = 2


async def answer(comm: WebsocketCommunicator, request_id: str) -> tuple[dict, list[dict]]:
    """The `synced` answering `request_id` and the frames that came before it."""
    before: list[dict[str, Any]] = []
    while (frame := await comm.receive_json_from(WAIT)).get("id") != request_id:
        before.append(frame)
    assert frame["type"] == "synced", frame
    return frame, before


@database_sync_to_async
def _fill(sender: Any, cid: str, count: int) -> None:
    for n in range(count):
        sends.send(sender, cid, unique("k"), f"m{n}")


async def test_a_sync_answer_covers_one_page_and_the_pages_cover_everything_once(
    runtime, settings
) -> None:
    settings.SYNC_PAGE_CONVERSATIONS = PAGE
    alice, token = await person()
    bob, _ = await person()
    listed = [(await group(bob, alice)).pk for _ in range(3 * PAGE)]
    unlisted = [(await group(bob, alice)).pk for _ in range(PAGE + 1)]
    foreign = (await group(bob)).pk  # not alice's: never replayed, never announced
    for cid in [*listed, *unlisted, foreign]:
        await _fill(bob, cid, MESSAGES_EACH)
    comm = await chat(token)
    positions = {cid: 0 for cid in [*listed, foreign]}

    replayed: Counter[tuple[str, int]] = Counter()
    entries: Counter[str] = Counter()
    joined: Counter[str] = Counter()
    page: str | None = None
    pages = 0
    while True:
        pages += 1
        frame: dict[str, Any] = {"type": "sync", "id": f"s{pages}", "positions": positions}
        if page is not None:
            frame["page"] = page
        await comm.send_json_to(frame)
        synced, before = await answer(comm, f"s{pages}")
        covered = set(synced["conversations"]) | {
            f["conversation"]["id"] for f in before if f["type"] == "joined"
        }
        assert len(covered) <= PAGE  # bounded, whatever the user's count
        for f in before:
            if f["type"] == "message":
                replayed[(f["conversation"], f["seq"])] += 1
            elif f["type"] == "joined":
                joined[f["conversation"]["id"]] += 1
        for cid, info in synced["conversations"].items():
            entries[cid] += 1
            assert info == {"seq": MESSAGES_EACH, "replayed": MESSAGES_EACH, "complete": True}
        if not synced["more"]:
            assert "next" not in synced
            break
        page = synced["next"]
        assert pages < 10, "the pages never end"

    everyone = len(listed) + len(unlisted)
    assert pages == -(-everyone // PAGE)
    assert entries == Counter(listed)
    assert joined == Counter(unlisted)
    assert replayed == Counter(
        {(cid, seq): 1 for cid in listed for seq in range(1, MESSAGES_EACH + 1)}
    )
    # Every conversation is live, whatever page it was on.
    await _fill(bob, listed[-1], 1)
    live = await comm.receive_json_from(WAIT)
    assert (live["type"], live["conversation"], live["seq"]) == (
        "message",
        listed[-1],
        MESSAGES_EACH + 1,
    )
    await comm.disconnect()


async def test_a_page_that_is_not_a_conversation_id_is_a_bad_request(runtime) -> None:
    _, token = await person()
    comm = await chat(token)
    await comm.send_json_to({"type": "sync", "id": "s", "positions": {}, "page": 7})
    error = await comm.receive_json_from(WAIT)
    assert error["code"] == "bad_request" and error["field"] == "page" and error["id"] == "s"
    await comm.disconnect()


async def test_a_node_pages_sync_by_its_setting(production_stack, make_node) -> None:
    """The setting reaches a live node; the first page comes with `next`, the last not."""
    node = make_node(production_stack, SYNC_PAGE_CONVERSATIONS="2")
    alice, bob = live_person(node), live_person(node)
    ids = sorted(live_group(node, bob, alice, title=f"g{n}") for n in range(3))
    ws = await alice.socket(node)
    await ws.send({"type": "sync", "id": "p1", "positions": {cid: 0 for cid in ids}})
    first = await expect_skipping(ws, "synced")
    assert (sorted(first["conversations"]), first["more"], first["next"]) == (ids[:2], True, ids[1])
    await ws.send(
        {"type": "sync", "id": "p2", "positions": {cid: 0 for cid in ids}, "page": ids[1]}
    )
    last = await expect_skipping(ws, "synced")
    assert (sorted(last["conversations"]), last["more"], "next" in last) == (ids[2:], False, False)
    await ws.close()
