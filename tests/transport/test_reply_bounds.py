"""A single reply is bounded in bytes (MAX_REPLY_BYTES, docs/security.md): however much
a user could ask for at once, the answer stays under the bound and nothing is lost."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import User
from project.asgi import application
from realtime.chat import conversations
from realtime.topics import service as topics
from tests.support.focused import WAIT, chat, person
from tests.support.names import unique

pytestmark = pytest.mark.django_db(transaction=True)

BOUND = 65536


@pytest.fixture(autouse=True)
def _small_bound(settings) -> None:
    settings.MAX_REPLY_BYTES = BOUND


async def stream(token: str) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        application, "/ws/stream/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from(WAIT))["type"] == "welcome"
    return comm


async def reply(comm: WebsocketCommunicator, frame: dict) -> tuple[dict, int]:
    """The answer to `frame` (by id) and its size in bytes as sent."""
    await comm.send_json_to(frame)
    while True:
        raw = await comm.receive_from(WAIT)
        answer = json.loads(raw)
        if answer.get("id") == frame["id"]:
            return answer, len(raw.encode())


async def test_a_replay_beyond_the_bound_is_not_recovered_and_nothing_is_half_sent(
    runtime,
) -> None:
    _, token = await person()
    topic = f"prices:{unique('B')}"
    data = {"blob": "x" * 3000}
    first = None
    for _ in range(40):  # about 120 kB of history
        published = await topics.apublish(topic, data)
        first = first or published
    epoch = first["epoch"]
    comm = await stream(token)
    whole = {"offset": 0, "epoch": epoch}
    answer, size = await reply(
        comm, {"type": "subscribe", "id": "a", "topic": topic, "since": whole}
    )
    assert (answer["recovered"], answer["publications"], answer["offset"]) == (False, [], 40)
    assert size < BOUND
    # A replay within the bound is whole and recovered.
    other = await stream(token)
    answer, size = await reply(
        other,
        {"type": "subscribe", "id": "b", "topic": topic, "since": {"offset": 30, "epoch": epoch}},
    )
    assert answer["recovered"] is True
    assert [p["offset"] for p in answer["publications"]] == list(range(31, 41))
    # Live publications follow on both, once each.
    await topics.apublish(topic, {"n": 41})
    for socket in (comm, other):
        pub = await socket.receive_json_from(WAIT)
        assert (pub["type"], pub["offset"]) == ("pub", 41)
    await comm.disconnect()
    await other.disconnect()


@database_sync_to_async
def big_groups(owner: User, count: int, members: int) -> set[str]:
    others = [User.objects.create_user(unique("m")) for _ in range(members)]
    return {
        conversations.check_create_group(owner, unique("g"), [u.pk for u in others]).id
        for _ in range(count)
    }


async def test_a_conversations_page_is_cut_to_the_bound_and_pages_give_everything(
    runtime,
) -> None:
    owner, token = await person()
    made = await big_groups(owner, 40, 60)  # each about 2 kB with its member list
    comm = await chat(token)
    seen: list[str] = []
    offset = pages = 0
    while True:
        answer, size = await reply(
            comm, {"type": "conversations", "id": f"c{pages}", "offset": offset}
        )
        page = answer["data"]["conversations"]
        assert size <= BOUND and page
        seen += [c["id"] for c in page]
        offset += len(page)
        pages += 1
        if not answer["data"]["has_more"]:
            break
    assert pages > 1 and sorted(seen) == sorted(made)  # each once, none missing
    answer, _ = await reply(comm, {"type": "conversations", "id": "l", "limit": 2})
    assert len(answer["data"]["conversations"]) == 2 and answer["data"]["has_more"]
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "5"}, {"offset": -1}, {"offset": 2**70}):
        answer, _ = await reply(comm, {"type": "conversations", "id": "x", **bad})
        assert (answer["type"], answer["code"], answer["field"]) == (
            "error",
            "bad_request",
            next(iter(bad)),
        )
    await comm.disconnect()
