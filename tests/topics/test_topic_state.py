"""No state for topics nobody publishes to (docs/architecture.md, "Topic choices"):
reading one through either store, or subscribing to one over a socket, leaves
nothing behind once the socket unsubscribed or closed. An attacker looping over
random names costs neither Redis keys nor node memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY

from project.asgi import application
from realtime.topics import fanout
from realtime.topics.service import apublish
from realtime.topics.store import (
    EMPTY_EPOCH,
    MemoryStore,
    Namespace,
    RedisStore,
    Snapshot,
    TopicStore,
    get_store,
)
from tests.support.focused import WAIT, person
from tests.support.names import unique
from tests.support.waiting import eventually

PRICES = {"history_size": 3, "history_ttl": 3600, "access": "open"}
NS = Namespace("prices", **PRICES)
PROBES = 2000


def now() -> int:
    import time

    return int(time.time() * 1000)


@pytest.fixture(params=["memory", "redis"])
async def store_and_size(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[TopicStore, Callable[[], int]]]:
    """A store and what it holds: topics in memory, or keys in its Redis database."""
    if request.param == "memory":
        memory = MemoryStore()
        yield memory, lambda: len(memory.topics)
        return
    service = request.getfixturevalue("redis_service")
    redis_store = RedisStore([service.url])
    await redis_store.reset()
    client = service.client()
    # The probed topics' keys only: the session's Redis also holds other tests' keys.
    yield redis_store, lambda: sum(1 for _ in client.scan_iter("tether:topic:{prices:probe*"))
    await redis_store.reset()
    client.close()


async def test_reading_topics_nobody_published_to_stores_nothing(store_and_size) -> None:
    store, size = store_and_size
    before = size()
    names = [f"prices:{unique('probe')}" for _ in range(PROBES)]
    answers = set()
    for i, topic in enumerate(names):
        empty = await store.snapshot(topic, NS, None, None)  # REST history, subscribe
        resumed = await store.snapshot(topic, NS, i % 5, "e-guessed" if i % 2 else EMPTY_EPOCH)
        ranged = await store.read_range(topic, NS, 0, i)  # REST history, gap fills
        answers.add((empty.offset, empty.epoch, empty.entries, resumed.offset, resumed.epoch))
        assert ranged == (None, [])
    assert await store.heads(names[:200]) == {}  # the head check
    assert size() == before
    assert answers == {(0, EMPTY_EPOCH, None, 0, EMPTY_EPOCH)}
    # Publishing afterwards starts the topic as if it had never been read.
    offset, epoch = await store.publish(names[0], NS, "1", now())
    assert offset == 1 and epoch not in (EMPTY_EPOCH, "e-guessed")
    assert size() > before


async def test_the_empty_epoch_goes_with_offset_0_only(store_and_size) -> None:
    """Resuming from offset 0 of EMPTY_EPOCH is resuming from nothing held: recovered
    when history still has every publication from 1, whichever epoch they carry."""
    store, _ = store_and_size
    topic = f"prices:{unique('fresh')}"

    def offsets(snap: Snapshot) -> list[int] | None:
        return None if snap.entries is None else [e[0] for e in snap.entries]

    assert offsets(await store.snapshot(topic, NS, 0, EMPTY_EPOCH)) == []  # up to date
    assert offsets(await store.snapshot(topic, NS, 0, "e-other")) is None
    _, epoch = await store.publish(topic, NS, "1", now())
    await store.publish(topic, NS, "2", now())
    snap = await store.snapshot(topic, NS, 0, EMPTY_EPOCH)
    assert (snap.offset, snap.epoch, offsets(snap)) == (2, epoch, [1, 2])
    assert offsets(await store.snapshot(topic, NS, 1, EMPTY_EPOCH)) is None
    for data in ("3", "4"):
        await store.publish(topic, NS, data, now())
    assert offsets(await store.snapshot(topic, NS, 0, EMPTY_EPOCH)) is None  # 1 trimmed


async def test_redis_flush_reads_store_nothing_and_the_next_publication_is_a_new_epoch(
    redis_service,
) -> None:
    store = RedisStore([redis_service.url])
    await store.reset()
    topic = f"prices:{unique('flushed')}"
    for data in ("1", "2", "3"):
        _, epoch = await store.publish(topic, NS, data, now())
    redis_service.flushall()
    client = redis_service.client()
    snap = await store.snapshot(topic, NS, 3, epoch)
    assert (snap.offset, snap.entries) == (0, None) and snap.epoch != epoch
    assert client.dbsize() == 0
    assert snap.epoch == EMPTY_EPOCH
    offset, after = await store.publish(topic, NS, "again", now())
    assert offset == 1 and after not in (epoch, EMPTY_EPOCH)
    resumed = await store.snapshot(topic, NS, 3, epoch)
    assert (resumed.offset, resumed.epoch, resumed.entries) == (1, after, None)
    client.close()


# --- one socket through the consumer, embedded (in-memory store and layer) ----------


async def stream_socket(token: str) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        application, "/ws/stream/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    ok, _ = await comm.connect()
    assert ok
    assert (await comm.receive_json_from(WAIT))["type"] == "welcome"
    return comm


async def request(comm: WebsocketCommunicator, frame: dict[str, Any]) -> dict[str, Any]:
    await comm.send_json_to(frame)
    return await comm.receive_json_from(WAIT)


def node_state(runtime: Any) -> dict[str, Any]:
    """What the node keeps about topics, outside the sockets."""
    store = get_store()
    assert isinstance(store, MemoryStore)  # in-process tests run embedded
    return {
        "hub_groups": set(runtime.hub.groups),
        "topic_groups": dict(fanout.TOPIC_OF_GROUP),
        "stored": set(store.topics),
    }


def socket_state(runtime: Any) -> list[int]:
    return [
        len(d)
        for conn in runtime.connections.values()
        for d in (conn.epochs, conn.cursors, conn.sequences, conn.sent_runs)
    ]


def label_values() -> set[str]:
    return {v for metric in REGISTRY.collect() for s in metric.samples for v in s.labels.values()}


@pytest.mark.django_db(transaction=True)
async def test_subscribing_to_random_topics_leaves_the_node_flat(runtime, settings) -> None:
    # Without `ops`: the node's figures would otherwise create `ops:stats` mid-test.
    settings.TOPIC_NAMESPACES = {"prices": PRICES}
    settings.RATE_LIMIT_PER_SECOND = 100_000
    settings.RATE_LIMIT_BURST = 100_000
    _, token = await person()
    comm = await stream_socket(token)
    await request(comm, {"type": "subscribe", "topic": "prices:warm-up"})
    await request(comm, {"type": "unsubscribe", "topic": "prices:warm-up"})
    before, labels = node_state(runtime), label_values()
    marker = unique("probe")
    answers = set()
    for i in range(PROBES // 2):
        topic = f"prices:{marker}-{i}"
        frame: dict[str, Any] = {"type": "subscribe", "topic": topic}
        if i % 3:
            frame["since"] = {"offset": i % 2, "epoch": EMPTY_EPOCH if i % 3 == 1 else "e-x"}
        reply = await request(comm, frame)
        left = await request(comm, {"type": "unsubscribe", "topic": topic})
        assert (reply["type"], left["type"]) == ("subscribed", "unsubscribed")
        # Recovered (up to date) only from offset 0 of the empty epoch itself.
        empty = frame.get("since") == {"offset": 0, "epoch": EMPTY_EPOCH}
        answers.add((reply["offset"], reply["epoch"], reply["recovered"] is empty))
    assert node_state(runtime) == before
    assert not any(socket_state(runtime))
    assert answers == {(0, EMPTY_EPOCH, True)}
    # No metric carries a topic name as a label value.
    assert not any(marker in value for value in label_values() - labels)
    # A socket that closes while subscribed leaves nothing either.
    for i in range(20):
        await request(comm, {"type": "subscribe", "topic": f"prices:{marker}-held-{i}"})
    assert len(node_state(runtime)["hub_groups"]) == len(before["hub_groups"]) + 20
    await comm.disconnect()
    await eventually(lambda: node_state(runtime) == before, what="the topics' groups gone")


@pytest.mark.django_db(transaction=True)
async def test_first_publications_racing_a_subscribe_arrive_once(runtime, monkeypatch) -> None:
    """The empty topic is read, then its first publications arrive before the reply:
    the reply gives their epoch and position, and nothing is delivered twice."""
    _, token = await person()
    comm = await stream_socket(token)
    topic = f"prices:{unique('race')}"
    store = get_store()
    read = store.snapshot
    raced = False

    async def read_then_publish(*args: Any) -> Snapshot:
        nonlocal raced
        snap = await read(*args)
        if not raced:
            raced = True
            for i in (1, 2):
                await apublish(topic, i)
            conn = next(iter(runtime.connections.values()))
            await eventually(lambda: len(conn.sequences[topic].pending) == 2, what="queued")
        return snap

    monkeypatch.setattr(store, "snapshot", read_then_publish)
    reply = await request(comm, {"type": "subscribe", "topic": topic})
    published = await apublish(topic, 3)
    assert reply["epoch"] == published["epoch"] != EMPTY_EPOCH
    got = []
    while not await comm.receive_nothing(0.3):
        frame = await comm.receive_json_from(WAIT)
        assert frame["epoch"] == published["epoch"]
        got.append(frame["offset"])
    assert got == list(range(reply["offset"] + 1, 4))
    await comm.disconnect()
