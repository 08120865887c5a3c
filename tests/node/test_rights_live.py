"""A lost operator's right ends the staff subscriptions of the user's open sockets on
every node (docs/security.md), on PostgreSQL and Redis with two daphne processes."""

from __future__ import annotations

from typing import Any

from tests.support.live import STAFF_PASSWORD, Browser, DaphneNode, manage
from tests.support.names import unique
from tests.support.topics import published, stream
from tests.support.wsclient import WsClient

OPS = "ops:stats"
WAIT = 10  # the longest a frame that should come may take (a busy machine)

GRANT = """
from django.contrib.auth.models import Group, Permission
from accounts.models import User
perm = Permission.objects.get(content_type__app_label="realtime", codename="view_operations")
user = User.objects.get(username="{user}")
user.is_staff = True
user.save()
if "{group}":
    group = Group.objects.create(name="{group}")
    group.permissions.add(perm)
    user.groups.add(group)
else:
    user.user_permissions.add(perm)
"""


def grant(node: DaphneNode, user: str, group: str = "") -> None:
    """Staff status and the right to view operations, directly or through a new group."""
    manage(node.stack.env(), "shell", "-c", GRANT.format(user=user, group=group))


async def subscribe(client: WsClient, topic: str, rid: str) -> dict[str, Any]:
    await client.send({"type": "subscribe", "id": rid, "topic": topic})
    while True:
        frame = await client.recv(WAIT)
        if frame.get("id") == rid:
            return frame


async def ended(client: WsClient, topic: str) -> dict[str, Any]:
    """The server-sent end of `topic`'s subscription (publications may come before)."""
    while True:
        frame = await client.recv(WAIT)
        if frame["type"] == "unsubscribed" and frame["topic"] == topic:
            return frame


async def pub_of(client: WsClient, topic: str) -> dict[str, Any]:
    while True:
        frame = await client.recv(WAIT)
        if frame["type"] == "pub" and frame["topic"] == topic:
            return frame


async def test_a_permission_taken_in_the_admin_ends_staff_subscriptions_on_every_node(
    two_nodes: tuple[DaphneNode, DaphneNode],
) -> None:
    a, b = two_nodes
    name, group = unique("op"), unique("operators")
    token = a.register(name)
    grant(a, name, group)
    sockets = [await stream(a, token), await stream(b, token)]
    for client in sockets:
        assert (await subscribe(client, OPS, "o"))["type"] == "subscribed"
        assert (await subscribe(client, "prices:KEPT", "p"))["type"] == "subscribed"
    # An administrator takes the permission from the group in node a's Django admin.
    root = unique("root")
    a.create_superuser(root)
    admin = Browser(a)
    admin.login(root, STAFF_PASSWORD)
    group_id = a.stack.sql("SELECT id FROM auth_group WHERE name = %s", group)[0][0]
    status = admin.post_form(f"/admin/auth/group/{group_id}/change/", {"name": group})
    assert status == 200
    for client in sockets:
        assert await ended(client, OPS) == {
            "type": "unsubscribed",
            "topic": OPS,
            "reason": "forbidden",
        }
        assert (await subscribe(client, OPS, "again"))["code"] == "forbidden"
    # The other subscriptions carry on, on both nodes.
    published(a, a.staff_token(unique("pub")), "prices:KEPT", {"bid": 1})
    for client in sockets:
        assert (await pub_of(client, "prices:KEPT"))["data"] == {"bid": 1}
        await client.close()


async def test_staff_status_taken_away_ends_staff_subscriptions_on_the_other_node(
    two_nodes: tuple[DaphneNode, DaphneNode],
) -> None:
    a, b = two_nodes
    name = unique("op")
    token = a.register(name)
    grant(a, name)
    on_b = await stream(b, token)
    assert (await subscribe(on_b, OPS, "o"))["type"] == "subscribed"
    script = (
        "from accounts.models import User; "
        f"u = User.objects.get(username='{name}'); u.is_staff = False; u.save()"
    )
    manage(a.stack.env(), "shell", "-c", script)
    assert (await ended(on_b, OPS))["reason"] == "forbidden"
    assert (await subscribe(on_b, OPS, "again"))["code"] == "forbidden"
    await on_b.close()
