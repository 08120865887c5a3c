"""uvicorn, the optional server: the same application, chat and feeds, limits and drain."""

from __future__ import annotations

import asyncio
import signal

from tests.support.chat import expect_message_from, group, person, send
from tests.support.live import live_ids, publish_many
from tests.support.names import unique
from tests.support.rawws import RawSocketClient
from tests.support.topics import published, pubs, stream, subscribe
from tests.support.waiting import eventually


async def test_chat_and_feeds_under_uvicorn(stack, make_node) -> None:
    node = make_node(stack, server="uvicorn")
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    on_a, on_b = await alice.socket(node), await bob.socket(node)
    ack = await send(on_a, cid, "hello over uvicorn")
    assert (await expect_message_from(on_b, alice.id))["seq"] == ack["seq"]
    staff = node.staff_token(unique("ops"))
    topic = f"prices:{unique('U')}"
    client = await stream(node, bob.token)
    await subscribe(client, topic)
    for i in range(5):
        published(node, staff, topic, i)
    assert [p["offset"] for p in await pubs(client, 5)] == [1, 2, 3, 4, 5]
    for ws in (on_a, on_b, client):
        await ws.close()


async def test_uvicorn_slow_consumer_4509_and_drain_1012(embedded_stack, make_node) -> None:
    node = make_node(
        embedded_stack, server="uvicorn", OUTBOUND_MAX_FRAMES="100", OUTBOUND_MAX_BYTES="131072"
    )
    staff = node.staff_token(unique("ops"))
    token = node.register(unique())
    topic = f"prices:{unique('V')}"
    fast = await stream(node, token)
    await subscribe(fast, topic)
    before = live_ids(node)
    slow = RawSocketClient(node.port, "/ws/stream/", token)
    slow.send({"type": "subscribe", "id": "s", "topic": topic})
    await eventually(lambda: len(live_ids(node) - before) == 1)
    (slow_id,) = live_ids(node) - before
    await asyncio.get_running_loop().run_in_executor(
        None, publish_many, node, staff, topic, 1500, 16_000
    )
    assert [p["offset"] for p in await pubs(fast, 1500, 30)] == list(range(1, 1501))
    await eventually(lambda: slow_id not in live_ids(node), timeout=20)
    assert "code=4509 reason=slow_consumer" in node.log_text()
    slow.close()
    exit_code = await asyncio.to_thread(node.stop, signal.SIGTERM)
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    assert await fast.close_code() == 1012
    assert node.stack.sql("SELECT count(*) FROM realtime_node WHERE name = %s", node.name) == [(0,)]
