"""Both topic stores behind one interface: offsets, capped history, lifetime, epochs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from realtime.topics.store import EMPTY_EPOCH, MemoryStore, Namespace, RedisStore, TopicStore

NS = Namespace("prices", history_size=3, history_ttl=3600, access="open")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TopicStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    service = request.getfixturevalue("redis_service")
    redis_store = RedisStore([service.url])
    await redis_store.reset()
    yield redis_store
    await redis_store.reset()


def now() -> int:
    return int(time.time() * 1000)


async def test_offsets_history_and_recovery(store: TopicStore) -> None:
    empty = await store.snapshot("prices:A", NS, None, None)
    assert (empty.offset, empty.epoch, empty.entries) == (0, EMPTY_EPOCH, None)
    results = [await store.publish("prices:A", NS, f'{{"i":{i}}}', now()) for i in range(5)]
    assert [r[0] for r in results] == [1, 2, 3, 4, 5]
    epoch = results[0][1]
    assert {r[1] for r in results} == {epoch} and epoch != EMPTY_EPOCH
    snap = await store.snapshot("prices:A", NS, 3, epoch)
    assert snap.offset == 5 and [e[0] for e in snap.entries or []] == [4, 5]
    assert snap.entries is not None and snap.entries[0][2] == '{"i":3}'
    assert (await store.snapshot("prices:A", NS, 1, epoch)).entries is None  # trimmed
    assert (await store.snapshot("prices:A", NS, 4, "e-other")).entries is None
    assert (await store.snapshot("prices:A", NS, 9, epoch)).entries is None
    assert (await store.snapshot("prices:A", NS, 5, epoch)).entries == []
    got, entries = await store.read_range("prices:A", NS, 2, 5)
    assert got == epoch and [e[0] for e in entries] == [3, 4, 5]
    heads = await store.heads(["prices:A", "prices:never"])
    assert heads == {"prices:A": (5, epoch)}


async def test_history_lifetime_counts_as_missing(store: TopicStore) -> None:
    short = Namespace("prices", history_size=10, history_ttl=60, access="open")
    first_offset, epoch = await store.publish("prices:T", short, "1", now() - 120_000)
    await store.publish("prices:T", short, "2", now())
    assert (await store.snapshot("prices:T", short, 0, epoch)).entries is None
    assert [e[2] for e in (await store.snapshot("prices:T", short, 1, epoch)).entries or []] == [
        "2"
    ]
    assert first_offset == 1


async def test_redis_history_gone_means_a_new_epoch(redis_service) -> None:
    store = RedisStore([redis_service.url])
    await store.reset()
    _, epoch = await store.publish("prices:X", NS, "1", now())
    client = redis_service.client()
    client.delete("tether:topic:{prices:X}:history")  # expired or evicted: history lost
    snap = await store.snapshot("prices:X", NS, 1, epoch)
    assert snap.epoch != epoch and snap.entries is None and snap.offset == 1
    offset, after = await store.publish("prices:X", NS, "2", now())
    assert (offset, after) == (2, snap.epoch)
    redis_service.flushall()
    offset, flushed = await store.publish("prices:X", NS, "3", now())
    assert offset == 1 and flushed not in (epoch, snap.epoch)


async def test_another_replication_history_means_a_new_epoch(redis_service) -> None:
    """A promoted replica (or a restarted master) has another `master_replid`, and
    may lack the newest publications: every topic starts a new epoch at its next
    touch, with no history (the live failover: tests/node/test_redis_failover_live.py)."""
    store = RedisStore([redis_service.url])
    await store.reset()
    for data in ("1", "2"):
        _, epoch = await store.publish("prices:F", NS, data, now())
    client = redis_service.client()
    assert (await store.snapshot("prices:F", NS, 1, epoch)).entries is not None
    # As if written under another server's replication history.
    client.hset("tether:topic:{prices:F}:meta", "h", "0" * 40)
    snap = await store.snapshot("prices:F", NS, 1, epoch)
    assert snap.epoch != epoch and snap.entries is None and snap.offset == 2
    assert not client.exists("tether:topic:{prices:F}:history")
    # Offsets go on in the new epoch; its history starts after the move.
    assert await store.publish("prices:F", NS, "3", now()) == (3, snap.epoch)
    again = await store.snapshot("prices:F", NS, 2, snap.epoch)
    assert [e[2] for e in again.entries or []] == ["3"]


async def test_redis_store_survives_a_burst_beyond_its_pool(redis_service) -> None:
    """Hundreds of subscribes at once wait for a pooled connection instead of failing."""
    import asyncio

    store = RedisStore([redis_service.url])
    await store.reset()
    snaps = await asyncio.gather(
        *(store.snapshot(f"prices:B{i % 7}", NS, None, None) for i in range(400))
    )
    assert len(snaps) == 400 and all(s.offset == 0 for s in snaps)
