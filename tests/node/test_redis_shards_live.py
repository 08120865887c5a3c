"""Several Redis servers: Redis capacity grows with servers (docs/deployment.md,
"Several Redis servers").

Three throwaway Redis servers named in one `REDIS_URL`, two daphne nodes on
PostgreSQL. Every topic and every conversation works across the nodes (live
delivery over the hub, history resumes, typing through the cache), and each kind of
key is spread over the three servers, each key or pub/sub channel on the server
the ring names for it: topic history, the hub's pub/sub channels (topics and
conversations), the channel layer's node channels, the cache's keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from project.cache_shards import ShardedRedisCache
from realtime.node.layer_compat import shard_index
from tests.support.chat import collect, expect_skipping, group, person, send
from tests.support.live import Stack
from tests.support.names import unique
from tests.support.services import RedisServer, start_or_skip
from tests.support.topics import published, stream, subscribe

pytestmark = pytest.mark.timeout(240)

SERVERS = 3
# Fixed names: the ring places them the same way every run.
TOPICS = 36
CONVERSATIONS = 12


@pytest.fixture
def three_redis() -> Iterator[list[RedisServer]]:
    servers = [RedisServer(own=True) for _ in range(SERVERS)]
    try:
        for server in servers:
            start_or_skip(server)
        yield servers
    finally:
        for server in servers:
            server.stop()


def keys_on(server: RedisServer, pattern: str) -> set[str]:
    with server.client() as conn:
        return {k.decode() for k in conn.scan_iter(match=pattern, count=1000)}


def channels_on(server: RedisServer, pattern: str) -> set[str]:
    with server.client() as conn:
        return {c.decode() for c in conn.pubsub_channels(pattern)}


def assert_spread(found: list[set[str]], name_of=lambda key: key) -> None:
    """Every server holds some, and each one is on the server the ring names."""
    for index, names in enumerate(found):
        assert names, f"server {index} holds none of them: {found}"
        misplaced = {n for n in names if shard_index(name_of(n), SERVERS) != index}
        assert not misplaced, f"on server {index} but ringed elsewhere: {misplaced}"


def test_the_cache_puts_each_key_on_its_server(three_redis: list[RedisServer]) -> None:
    cache = ShardedRedisCache(
        [s.url for s in three_redis],
        {"OPTIONS": {"serializer": "project.cache_json.JSONSerializer"}},
    )
    names = [f"k{n}" for n in range(60)]
    cache.set_many({n: n.upper() for n in names}, timeout=60)
    assert cache.get_many(names) == {n: n.upper() for n in names}
    assert cache.add("counter", 1, timeout=60) and not cache.add("counter", 5)
    assert cache.incr("counter", 2) == 3
    # Django's key as stored (":1:" is its version prefix) decides the server.
    assert_spread([keys_on(s, ":1:k*") for s in three_redis])
    assert cache.get("counter") == 3
    cache.delete_many(names[:30])
    assert set(cache.get_many(names)) == set(names[30:])
    cache.clear()
    assert all(not keys_on(s, "*") for s in three_redis)


async def test_topics_and_conversations_work_and_spread_over_three_servers(
    postgres_service, three_redis: list[RedisServer], make_node
) -> None:
    stack = Stack("sharded", postgres_service.url, " ".join(s.url for s in three_redis))
    stack.migrate()
    a, b = make_node(stack, "shard-a"), make_node(stack, "shard-b")

    # Topics: published on one node, live on the other, then resumed from history.
    staff = a.staff_token(unique("staff"))
    topics = [f"prices:SHARD{n}" for n in range(TOPICS)]
    watcher = await stream(b, staff)
    for n, topic in enumerate(topics):
        await watcher.send({"type": "subscribe", "id": f"s{n}", "topic": topic})
        await expect_skipping(watcher, "subscribed", keep=True)
    firsts = {}
    for topic in topics:
        firsts[topic] = published(a, staff, topic, {"n": 1})
        published(a, staff, topic, {"n": 2})
    live = await collect(watcher, "pub", 2 * TOPICS)
    assert sorted((p["topic"], p["data"]["n"]) for p in live) == sorted(
        (t, n) for t in topics for n in (1, 2)
    )
    resumer = await stream(a, staff)
    for topic in topics:
        since = {"offset": firsts[topic]["offset"] - 1, "epoch": firsts[topic]["epoch"]}
        sub = await subscribe(resumer, topic, since)
        assert sub["recovered"] is True, sub
        assert [p["data"]["n"] for p in sub["publications"]] == [1, 2]
    await resumer.close()
    # Both keys of a topic share its hash tag; the ring hashes the topic's name.
    assert_spread(
        [keys_on(s, "tether:topic:*:meta") for s in three_redis],
        name_of=lambda key: key.split("{", 1)[1].rsplit("}", 1)[0],
    )

    # Conversations: sent on one node, delivered live on the other; typing passes
    # through the cache's once-a-second limit (placement: the test above).
    pairs = []
    for _ in range(CONVERSATIONS):
        alice, bob = person(a), person(a)
        pairs.append((alice, bob, group(a, alice, bob)))
    sockets = []
    for alice, bob, cid in pairs:
        sender, reader = await alice.socket(a), await bob.socket(b)
        sockets += [sender, reader]
        ack = await send(sender, cid, f"hello {cid}")
        got = await expect_skipping(reader, "message", keep=True)
        assert (got["conversation"], got["seq"], got["body"]) == (cid, ack["seq"], f"hello {cid}")
        await sender.send({"type": "typing", "conversation": cid})
        typing = await expect_skipping(reader, "typing", keep=True)
        assert typing["user"]["id"] == alice.id

    # The hub's pub/sub: the nodes' subscriptions to topic groups (the watcher's)
    # and conversation groups, each channel on its server of the ring
    # (channels-redis' own placement).
    hub = [channels_on(s, "*__group__*") for s in three_redis]
    assert_spread(hub)
    assert sum(1 for names in hub for n in names if "__group__conv." in n) >= CONVERSATIONS
    assert sum(1 for names in hub for n in names if "__group__topic." in n) == TOPICS
    await asyncio.gather(watcher.close(), *(s.close() for s in sockets))
