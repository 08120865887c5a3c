"""PROTOCOL 7 and the topic rows of PROTOCOL 9 over real sockets, in both modes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.live import DaphneNode, http, manage
from tests.support.names import unique
from tests.support.topics import publish, published, pubs, stream, subscribe
from tests.support.wsclient import WsClient


async def test_subscribe_then_live_publications_each_once_in_order(node: DaphneNode) -> None:
    staff = node.staff_token(unique("ops"))
    topic = f"prices:{unique('T')}"
    client = await stream(node, node.register(unique()))
    reply = await subscribe(client, topic)
    assert reply["id"] == "s1" and reply["topic"] == topic
    assert reply["publications"] == [] and reply["recovered"] is False
    # Nothing published yet: offset 0 of the epoch no publication carries.
    assert (reply["offset"], reply["epoch"]) == (0, "e-0")
    results = [published(node, staff, topic, {"i": i, "html": "<b>x</b>"}) for i in range(3)]
    assert [r["offset"] for r in results] == [1, 2, 3]
    epoch = results[0]["epoch"]
    assert {r["epoch"] for r in results} == {epoch} and results[0]["topic"] == topic
    got = await pubs(client, 3)
    assert [p["offset"] for p in got] == [1, 2, 3]
    assert [p["data"] for p in got] == [{"i": i, "html": "<b>x</b>"} for i in range(3)]
    assert all(p["topic"] == topic and p["epoch"] == epoch for p in got)
    assert all(isinstance(p["ts"], int) for p in got)
    await client.send({"type": "unsubscribe", "id": "u1", "topic": topic})
    assert await client.expect("unsubscribed") == {
        "type": "unsubscribed",
        "id": "u1",
        "topic": topic,
    }
    published(node, staff, topic, {"i": 99})
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "pong"  # no pub came before it
    await client.close()


async def test_recovery_with_since_in_history_and_not(stack, make_node) -> None:
    namespaces = {"prices": {"history_size": 5, "history_ttl": 3600, "access": "open"}}
    node = make_node(stack, TOPIC_NAMESPACES=json.dumps(namespaces))
    staff = node.staff_token(unique("ops"))
    topic = f"prices:{unique('R')}"
    first = published(node, staff, topic, "one")
    for i in range(2, 5):
        published(node, staff, topic, i)
    epoch = first["epoch"]
    client = await stream(node, node.register(unique()))
    reply = await subscribe(client, topic, {"offset": 1, "epoch": epoch})
    assert reply["recovered"] is True and reply["offset"] == 4 and reply["epoch"] == epoch
    assert [(p["offset"], p["data"]) for p in reply["publications"]] == [(2, 2), (3, 3), (4, 4)]
    published(node, staff, topic, 5)
    assert [p["offset"] for p in await pubs(client, 1)] == [5]
    # Up to date: recovered with nothing to replay.
    again = await subscribe(client, topic, {"offset": 5, "epoch": epoch})
    assert again["recovered"] is True and again["publications"] == []
    # Another epoch: not recovered, the current position instead.
    other = await subscribe(client, topic, {"offset": 1, "epoch": "e-not-this"})
    assert other["recovered"] is False and other["publications"] == [] and other["offset"] == 5
    # Trimmed out of the 5-entry history.
    await client.send({"type": "unsubscribe", "topic": topic})
    await client.expect("unsubscribed")
    for i in range(6, 12):
        published(node, staff, topic, i)
    trimmed = await subscribe(client, topic, {"offset": 2, "epoch": epoch})
    assert trimmed["recovered"] is False and trimmed["publications"] == []
    assert trimmed["offset"] == 11
    # An offset from the future is not believed either.
    future = await subscribe(client, topic, {"offset": 50, "epoch": epoch})
    assert future["recovered"] is False and future["offset"] == 11
    await client.close()


async def test_topic_names_namespaces_access_and_limits(stack, make_node) -> None:
    node = make_node(stack, MAX_SUBSCRIPTIONS_PER_CLIENT="2")
    token = node.register(name := unique())
    status, me, _ = http("GET", node.url + "/api/me/", headers={"Authorization": f"Bearer {token}"})
    client = await stream(node, token)

    async def error_for(frame: dict[str, Any]) -> dict[str, Any]:
        await client.send({"id": "x", **frame})
        return await client.expect("error")

    for bad in ("prices", "Prices:X", "prices:a b", "prices:" + "x" * 129, ":x", "prices:x\n", 5):
        error = await error_for({"type": "subscribe", "topic": bad})
        assert error["code"] == "bad_request" and error["id"] == "x", (bad, error)
    unknown = await error_for({"type": "subscribe", "topic": "nope:x"})
    staff_only = await error_for({"type": "subscribe", "topic": "ops:x"})
    assert unknown["code"] == staff_only["code"] == "forbidden"
    assert unknown["message"] == staff_only["message"].replace("ops:", "nope:")
    other_user = "user:" + str(me["id"] + 1000)
    assert (await error_for({"type": "subscribe", "topic": other_user}))["code"] == "forbidden"
    for since in ({"offset": -1, "epoch": "e"}, {"offset": 1}, [1], {"offset": True, "epoch": "e"}):
        error = await error_for({"type": "subscribe", "topic": "prices:A", "since": since})
        assert error["code"] == "bad_request" and error["message"].startswith("since"), error
    own = await subscribe(client, f"user:{me['id']}")
    assert own["topic"] == f"user:{me['id']}"
    await subscribe(client, "prices:A")
    limit = await error_for({"type": "subscribe", "topic": "prices:B"})
    assert limit["code"] == "limit_exceeded"
    await subscribe(client, "prices:A")  # the same topic again is no new subscription
    await client.send({"type": "unsubscribe", "topic": "prices:A"})
    await client.expect("unsubscribed")
    await subscribe(client, "prices:B")
    # Staff may read `ops`; the socket survived every refusal above.
    staff = node.staff_token(unique("ops"))
    staff_client = await stream(node, staff)
    assert (await subscribe(staff_client, "ops:load"))["topic"] == "ops:load"
    await client.close()
    await staff_client.close()
    assert status == 200 and name


def test_rest_publish_and_history_rights(node: DaphneNode) -> None:
    topic = f"prices:{unique('H')}"
    user_token = node.register(name := unique())
    status, body = publish(node, user_token, topic, 1)
    assert status == 403 and body["error"] == "forbidden"
    assert http("POST", f"{node.url}/api/topics/{topic}/publish/", {"data": 1})[0] == 401
    publisher = manage(node.stack.env(), "issue_token", name, "--publish").stdout.strip()
    first = published(node, publisher, topic, {"n": 1})
    published(node, publisher, topic, {"n": 2})
    status, body = publish(node, publisher, topic, None)
    assert status == 201 and body["offset"] == 3  # JSON null is data too
    status, body = publish(node, publisher, "Bad%20topic", 1)
    assert status == 400 and body["error"] == "bad_request", body
    status, body, _ = http(
        "POST",
        f"{node.url}/api/topics/{topic}/publish/",
        {"nodata": 1},
        {"Authorization": f"Bearer {publisher}"},
    )
    assert status == 400 and body["error"] == "bad_request" and "data" in body["detail"]
    status, body = publish(node, publisher, "nope:x", 1)
    assert status == 403 and body["error"] == "forbidden"

    def history(path: str, token: str) -> tuple[int, dict[str, Any]]:
        status, body, _ = http("GET", node.url + path, headers={"Authorization": f"Bearer {token}"})
        return status, body

    status, body = history(f"/api/topics/{topic}/history/", user_token)
    assert status == 200
    assert body["topic"] == topic and body["epoch"] == first["epoch"] and body["offset"] == 3
    assert [p["data"] for p in body["publications"]] == [{"n": 1}, {"n": 2}, None]
    status, body = history(f"/api/topics/{topic}/history/?since=1", user_token)
    assert [p["offset"] for p in body["publications"]] == [2, 3]
    assert body["has_more"] is False and body["complete"] is True
    # Paged (PROTOCOL 9 lists): the next page starts after the last offset.
    status, body = history(f"/api/topics/{topic}/history/?limit=2", user_token)
    assert [p["offset"] for p in body["publications"]] == [1, 2] and body["has_more"] is True
    status, body = history(f"/api/topics/{topic}/history/?since=2&limit=2", user_token)
    assert [p["offset"] for p in body["publications"]] == [3] and body["has_more"] is False
    for bad in ("since=x", "limit=1001", "limit=-1"):
        status, body = history(f"/api/topics/{topic}/history/?{bad}", user_token)
        assert status == 400 and body["error"] == "bad_request", bad
    status, body = history("/api/topics/ops:secret/history/", user_token)
    assert status == 403
    # Which namespaces exist is not told: the same answer as a staff-only one.
    status, unknown = history("/api/topics/nons:secret/history/", user_token)
    assert (status, unknown["detail"]) == (403, body["detail"].replace("ops:", "nons:"))
    # A trailing newline is not a name ("$" alone would let it through).
    status, body = publish(node, publisher, topic + "%0A", 1)
    assert status == 400 and body["error"] == "bad_request", body


async def test_no_publication_lost_or_doubled_between_reply_and_live(node: DaphneNode) -> None:
    """Subscribe (and resume) while a publisher runs: offsets stay contiguous."""
    staff = node.staff_token(unique("ops"))
    topic = f"prices:{unique('G')}"
    published(node, staff, topic, 0)
    total = 120
    loop = asyncio.get_running_loop()

    def burst() -> None:
        for i in range(total):
            published(node, staff, topic, i)

    publisher = loop.run_in_executor(None, burst)
    seen: list[int] = []
    token = node.register(unique())
    client = await stream(node, token)
    reply = await subscribe(client, topic, {"offset": 0, "epoch": "stale"})
    assert reply["recovered"] is False
    first = reply["offset"]

    def position() -> int:
        return seen[-1] if seen else first

    for _ in range(3):  # reconnect and resume twice more mid-burst
        for _ in range(2):
            if position() == total + 1:
                break  # the burst is over (maybe before we subscribed) and all arrived
            seen.append((await client.expect("pub", 10))["offset"])
        await client.close()
        client = await stream(node, token)
        reply = await subscribe(client, topic, {"offset": position(), "epoch": reply["epoch"]})
        assert reply["recovered"] is True
        seen.extend(p["offset"] for p in reply["publications"])
    await publisher
    while position() < total + 1:
        try:
            seen.append((await client.expect("pub", 10))["offset"])
        except TimeoutError:
            raise AssertionError(f"publications stopped after {seen}") from None
    assert seen == list(range(first + 1, total + 2)), seen
    await client.close()


async def test_manage_py_publish_one_and_json_lines(node: DaphneNode) -> None:
    topic = f"prices:{unique('C')}"
    client = await stream(node, node.register(unique()))
    await subscribe(client, topic)
    env = node.stack.env()
    one = manage(env, "publish", topic, '{"bid": 1}', "--url", node.url)
    result = json.loads(one.stdout)
    assert result["topic"] == topic and result["offset"] == 1 and result["epoch"]
    lines = "".join(json.dumps({"i": i}) + "\n" for i in range(50)) + "not json\n"
    proc = manage(env, "publish", topic, "-", "--url", node.url, check=False, stdin=lines)
    assert proc.returncode == 1 and "line 51" in proc.stderr and "published 50" in proc.stderr
    offsets = [json.loads(line)["offset"] for line in proc.stdout.splitlines()]
    assert offsets == list(range(2, 52))
    got = await pubs(client, 51)
    assert [p["offset"] for p in got] == list(range(1, 52))
    assert got[-1]["data"] == {"i": 49}
    bad = manage(env, "publish", "nope:x", "1", "--url", node.url, check=False)
    assert bad.returncode != 0 and "forbidden" in bad.stderr
    await client.close()


async def test_embedded_history_gets_a_new_epoch_per_start(embedded_stack, make_node) -> None:
    node = make_node(embedded_stack)
    staff = node.staff_token(unique("ops"))
    topic = f"prices:{unique('E')}"
    before = published(node, staff, topic, 1)
    node.stop()
    node.start()
    client = await stream(node, node.register(unique()))
    reply = await subscribe(client, topic, {"offset": before["offset"], "epoch": before["epoch"]})
    assert reply["recovered"] is False and reply["epoch"] != before["epoch"]
    await client.close()


async def test_redis_flush_gives_a_new_epoch_to_connected_subscribers(
    production_stack, make_node, redis_service
) -> None:
    node = make_node(production_stack)
    staff = node.staff_token(unique("ops"))
    topic = f"prices:{unique('F')}"
    client = await stream(node, node.register(unique()))
    reply = await subscribe(client, topic)
    for i in range(3):
        published(node, staff, topic, i)
    assert [p["offset"] for p in await pubs(client, 3)] == [1, 2, 3]
    redis_service.flushall()
    after = published(node, staff, topic, "after flush")
    assert after["epoch"] != reply["epoch"] and after["offset"] == 1
    live = await client.expect("pub", 10)
    assert (live["offset"], live["epoch"], live["data"]) == (1, after["epoch"], "after flush")
    resumed = await subscribe(client, topic, {"offset": 3, "epoch": reply["epoch"]})
    assert resumed["recovered"] is False and resumed["epoch"] == after["epoch"]
    assert resumed["offset"] == 1
    published(node, staff, topic, "next")
    assert (await client.expect("pub", 10))["offset"] == 2
    await client.close()


async def test_publications_cross_nodes_once_in_order(two_nodes) -> None:
    node_a, node_b = two_nodes
    staff = node_b.staff_token(unique("ops"))
    topic = f"prices:{unique('N')}"
    token = node_a.register(unique())
    on_a = await stream(node_a, token)
    on_b = await stream(node_b, token)
    await subscribe(on_a, topic)
    await subscribe(on_b, topic)
    for i in range(20):
        published(node_b if i % 2 else node_a, staff, topic, i)
    for client in (on_a, on_b):
        got = await pubs(client, 20)
        assert [p["offset"] for p in got] == list(range(1, 21))
        assert [p["data"] for p in got] == list(range(20))
        await client.close()


@pytest.mark.parametrize("endpoint", ["chat"])
async def test_chat_endpoint_does_not_take_topic_frames(node: DaphneNode, endpoint: str) -> None:
    client = await WsClient.open(f"{node.ws_url}/ws/{endpoint}/", token=node.register(unique()))
    await client.welcome()
    await client.send({"type": "subscribe", "id": "z", "topic": "prices:A"})
    assert (await client.expect("error"))["code"] == "unknown_type"
    await client.close()
