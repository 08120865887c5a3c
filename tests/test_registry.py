"""Registry service functions: node records, batches, the reaper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from realtime import registry
from realtime.models import LiveConnection, Node

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
