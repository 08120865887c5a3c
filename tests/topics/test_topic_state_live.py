"""No state for topics nobody publishes to, over a live node (docs/security.md): an
attacker looping random names through subscribe, unsubscribe and REST history leaves
Redis's keys and the node's topic state as they were; a Redis flush still tells a
resuming client that its position is gone."""

from __future__ import annotations

import asyncio
import json
from http.client import HTTPConnection
from typing import Any

from tests.support.live import DaphneNode, Stack, http
from tests.support.names import unique
from tests.support.topics import published, pubs, stream, subscribe
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient

# Names probed per way in (socket, REST): 1,200 in all; each leak looked for grows
# with every name.
PROBES = 600
# Frames in flight at once on the probing socket (each answered before the next batch).
BATCH = 50
# Without `ops`: the node's figures would otherwise create `ops:stats` mid-test.
NAMESPACES = {
    "prices": {"history_size": 100, "history_ttl": 3600, "access": "open"},
    "user": {"history_size": 100, "history_ttl": 86400, "access": "own"},
}
SETTINGS = {
    "TOPIC_NAMESPACES": json.dumps(NAMESPACES),
    "RATE_LIMIT_PER_SECOND": "100000",
    "RATE_LIMIT_BURST": "100000",
    "MAX_SUBSCRIPTIONS_PER_CLIENT": str(BATCH),
    "METRICS_TOKEN": "scrape-me",
}
EMPTY_EPOCH = "e-0"  # docs/protocol.md, "Epochs"
# The node's resident memory may move this much over the probes: allocator noise,
# far below what a record per probed name would take.
RSS_SLACK = 24 * 1024 * 1024


SCRAPER = {"Authorization": "Bearer scrape-me"}


def metric_lines(node: DaphneNode) -> str:
    status, body, _ = http("GET", node.url + "/metrics", headers=SCRAPER)
    assert status == 200, body
    return body


# What the node keeps per topic or subscription (`tether_runtime_entries` kinds;
# `topics_in_memory` embedded only).
TOPIC_KINDS = ("hub_groups", "topic_groups", "topics_in_memory", "cursors", "sent_runs")


def entries(node: DaphneNode) -> dict[str, float]:
    """The node's topic entries by kind, and its topic subscriptions."""
    out = {}
    for line in metric_lines(node).splitlines():
        name, _, value = line.rpartition(" ")
        if name == "tether_subscriptions" or any(f'kind="{k}"' in name for k in TOPIC_KINDS):
            out[name] = float(value)
    return out


def rss(node: DaphneNode) -> int:
    assert node.proc is not None
    with open(f"/proc/{node.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def redis_keys(stack: Stack) -> set[bytes]:
    """Every key but the per-user quota counters (docs/security.md, "Limits"): one a
    user and window whatever the topics, each gone with its window."""
    import redis

    with redis.Redis.from_url(stack.redis_url) as client:
        return {k for k in client.scan_iter(count=1000) if b"tether:quota:" not in k}


async def probe_sockets(client: WsClient, names: list[str]) -> set[tuple[Any, ...]]:
    """Subscribe to each name (with and without `since`) and leave it, in batches; the
    distinct answers (offset, epoch, publications)."""
    answers = set()
    for start in range(0, len(names), BATCH):
        batch = names[start : start + BATCH]
        for i, topic in enumerate(batch):
            frame: dict[str, Any] = {"type": "subscribe", "topic": topic}
            if i % 2:
                frame["since"] = {"offset": i, "epoch": "e-guessed"}
            await client.send(frame)
        for _ in batch:
            reply = await client.expect("subscribed", 30)
            answers.add((reply["offset"], reply["epoch"], len(reply["publications"])))
        for topic in batch:
            await client.send({"type": "unsubscribe", "topic": topic})
        for _ in batch:
            await client.expect("unsubscribed", 30)
    return answers


def probe_rest(node: DaphneNode, token: str, names: list[str]) -> set[tuple[Any, ...]]:
    """History of each name over one keep-alive connection; the distinct answers."""
    answers = set()
    conn = HTTPConnection("127.0.0.1", node.port, timeout=30)
    auth = {"Authorization": f"Bearer {token}"}
    for i, topic in enumerate(names):
        query = f"?since={i}" if i % 2 else ""
        conn.request("GET", f"/api/topics/{topic}/history/{query}", headers=auth)
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        answers.add((body["offset"], body["epoch"], len(body["publications"])))
    conn.close()
    return answers


async def test_probing_random_topics_leaves_redis_and_the_node_flat(stack, make_node) -> None:
    node = make_node(stack, **SETTINGS)
    token = node.register(unique())
    client = await stream(node, token)
    marker = unique("probe")
    # Warm up what every first request creates (connections, label values, imports).
    await probe_sockets(client, [f"prices:{marker}-warm-{i}" for i in range(BATCH)])
    await asyncio.to_thread(probe_rest, node, token, [f"prices:{marker}-warm"] * 20)
    keys = redis_keys(stack) if stack.redis_url else set()
    state, memory = entries(node), rss(node)
    assert 'tether_runtime_entries{kind="topic_groups"}' in state, state
    names = [f"prices:{marker}-{i}" for i in range(PROBES)]
    answers = await probe_sockets(client, names)
    answers |= await asyncio.to_thread(probe_rest, node, token, names)
    if stack.redis_url:
        new = redis_keys(stack) - keys
        assert not new, sorted(new)[:10]
    assert entries(node) == state
    assert marker not in metric_lines(node)  # no topic name as a label value
    grown = rss(node) - memory
    assert grown < RSS_SLACK, f"RSS grew {grown / 2**20:.1f} MiB over {2 * PROBES} probes"
    assert answers == {(0, EMPTY_EPOCH, 0)}
    # A socket closed while subscribed leaves no topic behind either.
    for topic in names[:BATCH]:
        await subscribe(client, topic)
    await client.close()
    await eventually(lambda: entries(node) == state, what="the closed socket's topics gone")
    # A probed name published to afterwards starts like any topic.
    staff = node.staff_token(unique("ops"))
    listener = await stream(node, token)
    reply = await subscribe(listener, names[1], {"offset": 0, "epoch": EMPTY_EPOCH})
    assert (reply["offset"], reply["epoch"], reply["recovered"]) == (0, EMPTY_EPOCH, True)
    first = published(node, staff, names[1], "first")
    assert first["offset"] == 1 and first["epoch"] != EMPTY_EPOCH
    live = (await pubs(listener, 1))[0]
    assert (live["offset"], live["epoch"], live["data"]) == (1, first["epoch"], "first")
    assert published(node, staff, names[1], "second")["epoch"] == first["epoch"]
    assert [p["offset"] for p in await pubs(listener, 1)] == [2]
    await listener.close()


async def test_a_redis_flush_is_told_to_resuming_clients(production_stack, make_node) -> None:
    import redis

    node = make_node(production_stack, **SETTINGS)
    staff = node.staff_token(unique("ops"))
    token = node.register(unique())
    topic = f"prices:{unique('flush')}"
    follower = await stream(node, token)
    await subscribe(follower, topic)
    for i in range(3):
        before = published(node, staff, topic, i)
    assert [p["offset"] for p in await pubs(follower, 3)] == [1, 2, 3]
    with redis.Redis.from_url(production_stack.redis_url) as r:
        r.flushall()
        # Reading the lost topic, by socket or REST, tells the loss and stores nothing.
        resumer = await stream(node, token)
        since = {"offset": 3, "epoch": before["epoch"]}
        lost = await subscribe(resumer, topic, since)
        assert (lost["recovered"], lost["offset"]) == (False, 0)
        assert lost["epoch"] != before["epoch"]
        auth = {"Authorization": f"Bearer {token}"}
        status, history, _ = http("GET", f"{node.url}/api/topics/{topic}/history/", headers=auth)
        assert status == 200 and history["offset"] == 0
        assert not list(r.scan_iter(match="tether:topic:*"))
        assert lost["epoch"] == history["epoch"] == EMPTY_EPOCH
    after = published(node, staff, topic, "after flush")
    assert after["offset"] == 1 and after["epoch"] not in (before["epoch"], EMPTY_EPOCH)
    for client in (follower, resumer):
        live = await client.expect("pub", 10)
        assert (live["offset"], live["epoch"], live["data"]) == (1, after["epoch"], "after flush")
    # The old position is not believed; the empty one recovers the new epoch from 1.
    again = await subscribe(resumer, topic, since)
    assert (again["recovered"], again["offset"], again["epoch"]) == (False, 1, after["epoch"])
    fresh = await subscribe(resumer, topic, {"offset": 0, "epoch": EMPTY_EPOCH})
    assert fresh["recovered"] is True and [p["offset"] for p in fresh["publications"]] == [1]
    await follower.close()
    await resumer.close()
