"""Redis fails over under load: the nodes follow Sentinel's promotion without a restart.

A master, a replica and three sentinels (tests/support/sentinel.py); two daphne
nodes on PostgreSQL configured with `REDIS_SENTINELS`. Senders send continuously
with acks, members read with `sync` resumes, a publisher publishes to a topic that
a subscriber follows. Replication is cut, so the last publications are on the
master only, and the master gets SIGKILL. Then:

- both nodes serve on (same processes, `/ready/` answers 200 again);
- every acknowledged message is stored, and every member's logical socket got
  each message once, in order (the database is the truth; a resume fills gaps);
- a topic subscriber resuming from before the kill gets a new epoch (the promoted
  replica may lack the newest publications), and one resuming inside the epoch
  drawn after the promotion gets `recovered: true` with every publication;
- the time from the kill to the first accepted publication and to the first
  chat message delivered live again is printed (docs/deployment.md, "Redis Sentinel").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import pytest

from tests.support.chat import Person, group, person
from tests.support.live import DaphneNode, Stack, http
from tests.support.names import unique
from tests.support.resilient import (
    ERRORS,
    Connect,
    Member,
    Sender,
    Subscriber,
    acked_and_stored,
    each_member_got_all,
)
from tests.support.sentinel import MASTER_NAME, SentinelCluster, sentinel_cluster  # noqa: F401
from tests.support.topics import publish, stream, subscribe
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient

pytestmark = pytest.mark.timeout(300)

TOPIC = "prices:FAILOVER"
# Published before the kill and never after: its resume shows the lazy new epoch.
IDLE_TOPIC = "prices:FAILOVER-IDLE"
SENDERS = 3
# Load before the kill, and after the promotion, in seconds of steady sending.
LOAD_BEFORE = 3.0
LOAD_AFTER = 4.0
# Sentinel notices in 1 s (down-after-milliseconds) and elects in about as much;
# the nodes reconnect within their back-off. Far more than that is a failure.
PROMOTION_TIMEOUT = 30.0
RECOVERY_TIMEOUT = 30.0
ACK_TIMEOUT = 5.0
# Pacing of the load (a rate, not a wait for an event).
SEND_INTERVAL = 0.02
PUBLISH_INTERVAL = 0.05
DRAIN_TIMEOUT = 60.0


@dataclass
class Clock:
    """When the master died (monotonic), once it did."""

    killed: float | None = None


def rotating(who: Person, nodes: list[DaphneNode], first: int, endpoint: str = "chat") -> Connect:
    """A client's way back in: the nodes in turn, from `first`, each reconnect the next
    one, trying until one lets it in."""
    turns = itertools.count(first)

    async def connect() -> WsClient:
        turn = next(turns)
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            node = nodes[turn % len(nodes)]
            try:
                return await who.socket(node, endpoint)
            except ERRORS:
                if time.monotonic() > deadline:
                    raise
                turn += 1
                await asyncio.sleep(0.1)  # the node is not taking sockets yet: try the next

    return connect


@dataclass
class Publisher:
    """Publishes to TOPIC over REST as fast as the pacing allows; keeps what was accepted.

    Every attempt carries a new `n`: a publication answered with an error may
    still have been stored (history written, the hub's send failed), as a send
    without its ack may have been."""

    node: DaphneNode
    token: str
    accepted: list[tuple[str, int, int, float]] = field(default_factory=list)  # epoch, offset, n
    refused: set[int] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            try:
                status, body = await asyncio.to_thread(
                    publish, self.node, self.token, TOPIC, {"n": n}
                )
            except OSError:
                status, body = 0, None
            if status == 201:
                self.accepted.append((body["epoch"], body["offset"], n, time.monotonic()))
            else:
                self.refused.add(n)
            n += 1
            await asyncio.sleep(PUBLISH_INTERVAL)


async def resume(who: Person, node: DaphneNode, topic: str, epoch: str, offset: int) -> dict:
    ws = await stream(node, who.token)
    try:
        return await subscribe(ws, topic, {"epoch": epoch, "offset": offset})
    finally:
        await ws.close()


def ready(node: DaphneNode) -> bool:
    status, _, _ = http("GET", node.url + "/ready/", timeout=5)
    return status == 200


async def test_redis_master_killed_under_load(
    postgres_service,
    sentinel_cluster: SentinelCluster,  # noqa: F811
    make_node,
) -> None:
    stack = Stack(
        "sentinel",
        postgres_service.url,
        settings={
            "REDIS_SENTINELS": sentinel_cluster.sentinel_hosts,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            # Maintenance (and with it the head checks that fill what pub/sub
            # dropped) every second.
            "HEARTBEAT_INTERVAL": "2",
            "PING_TIMEOUT": "10",
        },
    )
    a, b = make_node(stack, "sentinel-a"), make_node(stack, "sentinel-b")
    nodes = [a, b]
    pids = {n.name: n.proc.pid for n in nodes if n.proc}
    staff = a.staff_token(unique("ops"))
    senders_people = [person(a, "snd") for _ in range(SENDERS)]
    readers_people = [person(a, "rd") for _ in range(2)]
    cid = group(a, senders_people[0], *senders_people[1:], *readers_people)
    watcher = person(a, "sub")
    for n in range(3):
        assert (await asyncio.to_thread(publish, a, staff, IDLE_TOPIC, {"n": n}))[0] == 201
    _, idle = await asyncio.to_thread(publish, a, staff, IDLE_TOPIC, {"n": 3})

    senders = [
        Sender(rotating(p, nodes, i % 2), cid, p.username, SEND_INTERVAL, ACK_TIMEOUT)
        for i, p in enumerate(senders_people)
    ]
    # Each reader on both nodes: three member sockets, two of them on the node
    # that does not carry their senders' sockets.
    members = [
        Member(rotating(who, nodes, first), cid, who.username)
        for who, first in ((readers_people[0], 0), (readers_people[0], 1), (readers_people[1], 1))
    ]
    publisher = Publisher(a, staff)
    subscriber = Subscriber(rotating(watcher, nodes, 1, "stream"), TOPIC)

    stop_load = asyncio.Event()
    stop_subscriber = asyncio.Event()
    final_seq: list[int] = []

    def all_read(last: int) -> bool:
        return bool(final_seq) and last >= final_seq[0]

    load = [asyncio.create_task(s.run(stop_load)) for s in senders]
    load.append(asyncio.create_task(publisher.run(stop_load)))
    readers = [asyncio.create_task(m.run(all_read)) for m in members]
    watching = asyncio.create_task(subscriber.run(stop_subscriber))

    clock = Clock()
    try:
        await eventually(
            lambda: all(s.acked for s in senders) and publisher.accepted and subscriber.seen,
            timeout=30,
            what="the load flowing",
        )
        await asyncio.sleep(LOAD_BEFORE)  # a few seconds of steady load before the kill
        # Replication falls behind: what is published from now on is on the master
        # only, and lost with it. Those topics' subscribers must not be told they
        # recovered.
        sentinel_cluster.cut_replication()
        cut_at = len(publisher.accepted)
        await eventually(
            lambda: len(publisher.accepted) >= cut_at + 3, 10, "publications only the master has"
        )
        before = publisher.accepted[-1]
        sentinel_cluster.kill_master()
        clock.killed = time.monotonic()
        await asyncio.to_thread(sentinel_cluster.wait_promoted, PROMOTION_TIMEOUT)
        promoted_after = time.monotonic() - clock.killed

        def published_again() -> bool:
            return any(t > clock.killed for *_, t in publisher.accepted)

        await eventually(published_again, RECOVERY_TIMEOUT, "a publication accepted again")
        await asyncio.sleep(LOAD_AFTER)  # steady load on the new master
    finally:
        stop_load.set()
        await asyncio.gather(*load)
    assert clock.killed is not None

    # Nodes: the same processes, ready again.
    for node in nodes:
        assert node.proc is not None and node.proc.poll() is None, node.log_tail()
        assert node.proc.pid == pids[node.name]
        await eventually(
            lambda n=node: asyncio.to_thread(ready, n), RECOVERY_TIMEOUT, f"{node.name} ready"
        )

    # Chat: every acknowledged message stored; every member socket got them all once, in order.
    acked, stored = acked_and_stored(stack.sql, cid, senders)
    assert all(stored.get(seq) == body for seq, body in acked.items()), "an ack without its row"
    final_seq.append(max(stored))
    await each_member_got_all(members, readers, stored, DRAIN_TIMEOUT)

    # Topics: what the subscriber saw matches what was accepted, epoch by epoch.
    stop_subscriber.set()
    await watching
    accepted = {(epoch, offset): n for epoch, offset, n, _ in publisher.accepted}

    def truthful(epoch: str, offset: int, n: int) -> bool:
        """The publication accepted at this position, or one refused but stored."""
        return accepted.get((epoch, offset), n) == n and (
            (epoch, offset) in accepted or n in publisher.refused
        )

    assert all(truthful(e, o, n) for e, o, n in subscriber.seen)
    for answer in subscriber.answers:
        if answer["recovered"] and answer["since"] is not None:
            since = answer["since"]
            assert answer["epoch"] == since["epoch"]
            offsets = [p["offset"] for p in answer["publications"]]
            assert offsets == list(range(since["offset"] + 1, answer["offset"] + 1))
    old_epoch, old_offset = before[0], before[1]
    after = [(e, o, n) for e, o, n, t in publisher.accepted if t > clock.killed]
    new_epoch = after[0][0]
    # Every topic written before the promotion may have lost its newest
    # publications on the promoted replica: a resume from before is not recovered.
    assert new_epoch != old_epoch
    reply = await resume(watcher, b, TOPIC, old_epoch, old_offset)
    assert (reply["epoch"], reply["recovered"], reply["publications"]) == (new_epoch, False, [])
    reply = await resume(watcher, a, IDLE_TOPIC, idle["epoch"], idle["offset"] - 1)
    assert reply["epoch"] != idle["epoch"] and not reply["recovered"]
    # Inside the epoch drawn after the promotion, a resume recovers everything.
    mid_epoch, mid_offset, _ = after[len(after) // 2]
    reply = await resume(watcher, b, TOPIC, mid_epoch, mid_offset)
    assert reply["recovered"] and reply["epoch"] == new_epoch
    got = {p["offset"]: p["data"]["n"] for p in reply["publications"]}
    assert list(got) == list(range(mid_offset + 1, reply["offset"] + 1))
    assert all(truthful(new_epoch, o, n) for o, n in got.items())
    assert all(got.get(o) == n for e, o, n in after if e == new_epoch and o > mid_offset)

    # What the promoted replica lacked: accepted in the old epoch beyond where the
    # new one restarted its history.
    with sentinel_cluster.replica.client() as conn:  # type: ignore[union-attr]
        restarted = int(conn.hget(f"tether:topic:{{{TOPIC}}}:meta", "r") or 0)
        # Each node's hub listens on the new master: its pub/sub connection came back
        # with every subscription (not only the head checks' fill from the database).
        listening = [c for c in conn.client_list() if int(c.get("sub", 0)) > 0]
    assert len(listening) >= len(nodes), listening
    lost = [o for e, o, _, _ in publisher.accepted if e == old_epoch and o > restarted]
    # Three accepted after the cut, one of which may have been stored before it
    # (the publisher has one request in flight at a time).
    assert len(lost) >= 2, (restarted, before)

    # Recovery times, from the kill.
    first_publish = min(t for *_, t in publisher.accepted if t > clock.killed) - clock.killed
    # Chat: the longest stretch after the kill in which no send was acknowledged
    # (a send answered `internal` meanwhile is resent with its id).
    times = sorted([clock.killed, *(t for s in senders for *_, t in s.acked if t > clock.killed)])
    pause = max(b - a for a, b in itertools.pairwise(times))
    acked_at = {seq: t for s in senders for seq, _, t in s.acked}
    # The longest a message waited between its ack and its arrival at a member:
    # what the failover cost chat delivery.
    worst_delay = max(m.received[seq] - t for m in members for seq, t in acked_at.items())
    print(
        f"\nREDIS FAILOVER: promotion seen by every sentinel after {promoted_after:.2f} s; "
        f"first publication accepted after {first_publish:.2f} s; longest pause between "
        f"chat acks {pause:.2f} s, longest ack-to-delivery wait {worst_delay:.2f} s; "
        f"{len(acked)} messages acknowledged "
        f"({sum(s.resent for s in senders)} retries, "
        f"{sum(m.resumes for m in members)} member resumes), {len(publisher.accepted)} "
        f"publications accepted ({len(publisher.refused)} refused during the failover, "
        f"{len(lost)} accepted but missing on the promoted replica)"
    )
    assert first_publish < RECOVERY_TIMEOUT and pause < RECOVERY_TIMEOUT
