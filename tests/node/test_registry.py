"""Registry service functions: node records, batches, the reaper."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from realtime.models import LiveConnection, Node
from realtime.node import registry
from tests.support.services import postgres_service, rerun_on_postgresql  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


def info(cid: str, user: User) -> registry.ConnectionInfo:
    return registry.ConnectionInfo(
        cid, "n", user.pk, "chat", f"chan.{cid}", "1.2.3.4", "ua", "token", "token:1"
    )


async def test_register_node_drops_records_of_a_previous_run() -> None:
    user = await User.objects.acreate(username="u")
    node, stale = await registry.register_node("node-z")
    assert stale == []
    await registry.add_connection(info("c1", user), node.id)
    again, stale = await registry.register_node("node-z")  # same NODE_NAME restarted
    assert again.id == node.id and stale == [user.pk]
    assert await LiveConnection.objects.acount() == 0


async def test_heartbeat_updates_last_seen_in_one_batch() -> None:
    user = await User.objects.acreate(username="u")
    node, _ = await registry.register_node("node-y")
    for cid in ("c1", "c2", "c3"):
        await registry.add_connection(info(cid, user), node.id)
    old = timezone.now() - timedelta(minutes=5)
    await LiveConnection.objects.aupdate(last_seen=old)
    assert await registry.node_heartbeat(node.id, ["c1", "c3"], 3) == 1
    fresh = {c.id async for c in LiveConnection.objects.filter(last_seen__gt=old)}
    assert fresh == {"c1", "c3"}
    assert (await Node.objects.aget(id=node.id)).connection_count == 3


def test_reaper_removes_only_silent_nodes() -> None:
    user = User.objects.create(username="u")
    now = timezone.now()
    alive = Node.objects.create(name="alive", last_heartbeat=now)
    dead = Node.objects.create(name="dead", last_heartbeat=now - timedelta(seconds=71))
    for node, cid in ((alive, "a1"), (dead, "d1"), (dead, "d2")):
        LiveConnection.objects.create(id=cid, node=node, user=user, endpoint="chat")
    result = registry.reap_silent_nodes(timedelta(seconds=70), now)
    assert result.nodes == ["dead"] and result.connections == 2 and result.user_ids == [user.pk]
    assert set(LiveConnection.objects.values_list("id", flat=True)) == {"a1"}
    assert list(Node.objects.values_list("name", flat=True)) == ["alive"]


def test_sockets_admitted_together_count_against_the_limit_in_arrival_order() -> None:
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    node = Node.objects.create(name="batch", last_heartbeat=timezone.now())
    LiveConnection.objects.create(id="old", node=node, user=alice, endpoint="chat")
    admitted = registry.admit_connections(
        [
            (info("a1", alice), node.id, 3),
            (info("b1", bob), node.id, 3),
            (info("a2", alice), node.id, 3),
            (info("a3", alice), node.id, 3),  # alice's fourth: over the limit
            (info("b2", bob), node.id, 1),  # bob's second, with a limit of one
        ]
    )
    assert admitted == [True, True, True, False, False]
    rows = LiveConnection.objects.order_by("id")
    assert [(c.id, c.user_id, c.subscriptions) for c in rows] == [
        ("a1", alice.pk, []),
        ("a2", alice.pk, []),
        ("b1", bob.pk, []),
        ("old", alice.pk, []),
    ]
    assert registry.admit_connections([(info("a4", alice), node.id, 3)]) == [False]


async def test_concurrent_admissions_share_batches_and_keep_their_answers() -> None:
    user = await User.objects.acreate(username="many")
    node, _ = await registry.register_node("node-batch")
    answers = await asyncio.gather(
        *(registry.admit(info(f"c{i}", user), node.id, 5) for i in range(12))
    )
    assert answers == [True] * 5 + [False] * 7  # in arrival order, whatever the batches
    assert await LiveConnection.objects.filter(user=user).acount() == 5
    assert await registry.remove_connection("c0") is True
    assert await registry.remove_connection("c0") is False


@pytest.mark.django_db(transaction=False)
def test_admissions_on_postgresql(postgres_service) -> None:  # noqa: F811
    """PostgreSQL takes another path (arrays, one unnest insert, bound parameters)."""
    rerun_on_postgresql(__file__, postgres_service, "(admit or admission) and not on_postgresql")


def test_one_liveness_rule_for_every_reader(settings) -> None:
    """Three missed heartbeats, at least 15 s: the admin, /api/stats/ and /ops/ ask
    `silent_after`; the reapers remove a node later, at `reap_after`."""
    settings.TETHER_MAINTENANCE_SECONDS = 1.0
    assert registry.silent_after() == timedelta(seconds=15)
    settings.TETHER_MAINTENANCE_SECONDS = 10.0
    assert registry.silent_after() == timedelta(seconds=30)
    now = timezone.now()
    assert registry.is_alive(now - timedelta(seconds=30), now)
    assert not registry.is_alive(now - timedelta(seconds=31), now)
    settings.TETHER_MAINTENANCE_SECONDS, settings.PING_TIMEOUT = 5.0, 60
    assert registry.reap_after() == timedelta(seconds=63)  # 60 + 10 - one pass - 2 s
