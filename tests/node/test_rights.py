"""Operators' rights are Django permissions (docs/security.md, "Who may do what"): each
staff REST row, staff topic and page asks its permission of a staff account, and an
open socket drops what a lost right no longer allows. In-process; the two-node case is
in test_rights_live.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, Permission
from django.test import Client
from rest_framework.test import APIClient

from accounts import credentials
from accounts.models import User
from project.asgi import application
from realtime.rest.permissions import DISCONNECT, PUBLISH, VIEW_CONNECTIONS, VIEW_OPERATIONS
from realtime.topics import handlers
from tests.support.focused import WAIT
from tests.support.names import unique

pytestmark = pytest.mark.django_db(transaction=True)

OPS = "ops:stats"
QUIET = 0.3  # how long "nothing arrives" is watched for

# Each staff REST row: (method, path, the right it needs, the status once allowed).
ROWS = [
    ("GET", "/api/admin/connections/", VIEW_CONNECTIONS, 200),
    ("DELETE", "/api/admin/connections/c_nope/", DISCONNECT, 404),
    ("POST", "/api/admin/connections/cleanup/", DISCONNECT, 200),
    ("GET", "/api/stats/", VIEW_OPERATIONS, 200),
    ("GET", "/api/admin/config/", VIEW_OPERATIONS, 200),
    ("GET", f"/api/topics/{OPS}/history/", VIEW_OPERATIONS, 200),
    ("POST", "/api/topics/prices:RIGHTS/publish/", PUBLISH, 201),
]


def permission(right: str) -> Permission:
    app_label, codename = right.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def operator(*rights: str, via_group: bool = False, **flags: Any) -> User:
    """A staff account (unless flags say otherwise) holding `rights`, given to the user
    or to a group of theirs."""
    user = User.objects.create_user(unique("op"), **{"is_staff": True, **flags})
    perms = [permission(r) for r in rights]
    if via_group:
        group = Group.objects.create(name=unique("operators"))
        group.permissions.add(*perms)
        user.groups.add(group)
    else:
        user.user_permissions.add(*perms)
    return user


def call(user: User, method: str, path: str, scopes: list[str] | None = None) -> Any:
    _, raw = credentials.issue_token(user, scopes=scopes or [])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    body = {"data": {"bid": 1}} if path.endswith("/publish/") else None
    return getattr(api, method.lower())(path, body, format="json")


@pytest.mark.parametrize(("method", "path", "right", "allowed"), ROWS)
def test_each_staff_row_asks_its_permission_not_staff_status(
    method: str, path: str, right: str, allowed: int
) -> None:
    others = [r for _, _, r, _ in ROWS if r != right]
    for attacker in (
        operator(),  # staff, no permission: what sufficed before
        operator(*others),  # every other right
        operator(right, is_staff=False),  # the permission without staff status
        operator(right, is_active=False),
    ):
        r = call(attacker, method, path)
        assert r.status_code in (401, 403), (attacker, r.content)
        if r.status_code == 403:
            assert r.json()["error"] == "forbidden"
    assert call(operator(right), method, path).status_code == allowed
    assert call(operator(right, via_group=True), method, path).status_code == allowed
    superuser = User.objects.create_superuser(unique("root"), password="x-Long-passw0rd-1")
    assert call(superuser, method, path).status_code == allowed


def test_a_service_token_publishes_by_its_scope_whoever_holds_it() -> None:
    """The `publish` scope rule of PROTOCOL 12 is unchanged: a plain user's token with it
    publishes; a staff token without it needs the permission."""
    plain = User.objects.create_user(unique("svc"))
    assert call(plain, "POST", "/api/topics/prices:S/publish/", ["publish"]).status_code == 201
    assert call(operator(), "POST", "/api/topics/prices:S/publish/", ["chat"]).status_code == 403


def test_the_ops_page_and_why_ready_failed_ask_the_right_to_view_operations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from monitoring import views

    async def down() -> None:
        raise ConnectionError("redis.internal:6379 refused the connection")

    monkeypatch.setattr(views, "check_channel_layer", down)

    def browser(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    staff, allowed = browser(operator()), browser(operator(VIEW_OPERATIONS, via_group=True))
    assert staff.get("/ops/").status_code == 403
    assert b'data-testid="nav-ops"' not in staff.get("/").content
    assert staff.get("/ready/").json()["checks"]["channel_layer"] == "failed"
    assert allowed.get("/ops/").status_code == 200
    assert b'data-testid="nav-ops"' in allowed.get("/").content
    shown = allowed.get("/ready/").json()["checks"]["channel_layer"]
    assert shown.startswith("ConnectionError")


def test_the_admin_disconnect_action_asks_the_disconnect_right() -> None:
    from django.contrib import admin
    from django.test import RequestFactory

    from realtime.models import LiveConnection

    model_admin = admin.site._registry[LiveConnection]

    def may(user: User) -> bool:
        request = RequestFactory().get("/admin/realtime/liveconnection/")
        request.user = user
        return "disconnect_selected" in model_admin.get_actions(request)

    assert not may(operator(VIEW_CONNECTIONS))
    assert not may(operator("realtime.delete_liveconnection", VIEW_CONNECTIONS))
    assert may(operator(DISCONNECT, VIEW_CONNECTIONS))


# --- sockets -----------------------------------------------------------------


async def stream(user: User) -> WebsocketCommunicator:
    _, raw = await database_sync_to_async(credentials.issue_token)(user)
    comm = WebsocketCommunicator(
        application, "/ws/stream/", headers=[(b"authorization", f"Bearer {raw}".encode())]
    )
    ok, _ = await comm.connect()
    assert ok
    assert (await comm.receive_json_from(WAIT))["type"] == "welcome"
    return comm


async def subscribe(comm: WebsocketCommunicator, topic: str, rid: str = "s") -> dict[str, Any]:
    await comm.send_json_to({"type": "subscribe", "id": rid, "topic": topic})
    while True:
        frame = await comm.receive_json_from(WAIT)
        if frame.get("id") == rid:
            return frame


async def ended(comm: WebsocketCommunicator, topic: str) -> dict[str, Any]:
    """The server-sent end of `topic`'s subscription (publications may come before)."""
    while True:
        frame = await comm.receive_json_from(WAIT)
        if frame["type"] == "unsubscribed" and frame["topic"] == topic:
            return frame


async def test_a_staff_socket_without_the_right_is_refused_ops_stats(runtime) -> None:
    user = await database_sync_to_async(operator)(VIEW_CONNECTIONS, DISCONNECT, PUBLISH)
    comm = await stream(user)
    refused = await subscribe(comm, OPS)
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    await comm.disconnect()


def _save(user: User, **fields: Any) -> None:
    fresh = User.objects.get(pk=user.pk)
    for name, value in fields.items():
        setattr(fresh, name, value)
    fresh.save()


LOSSES: dict[str, Callable[[User], None]] = {
    "permission": lambda u: u.user_permissions.remove(permission(VIEW_OPERATIONS)),
    "staff status": lambda u: _save(u, is_staff=False),
    "group membership": lambda u: u.groups.clear(),
    "the group's permission": lambda u: u.groups.get().permissions.remove(
        permission(VIEW_OPERATIONS)
    ),
    "the group itself": lambda u: u.groups.get().delete(),
    "the permission from the group's side": lambda u: permission(VIEW_OPERATIONS).group_set.clear(),
}


def _granted(how: str) -> User:
    if how in ("permission", "staff status"):
        return operator(VIEW_OPERATIONS)
    return operator(VIEW_OPERATIONS, via_group=True)


@pytest.mark.parametrize("how", list(LOSSES))
async def test_a_lost_right_ends_the_open_staff_subscription(runtime, how: str) -> None:
    user = await database_sync_to_async(_granted)(how)
    comm = await stream(user)
    assert (await subscribe(comm, OPS, "a"))["type"] == "subscribed"
    assert (await subscribe(comm, "prices:KEPT", "b"))["type"] == "subscribed"
    await database_sync_to_async(LOSSES[how])(user)
    assert await ended(comm, OPS) == {"type": "unsubscribed", "topic": OPS, "reason": "forbidden"}
    # Only the staff topic ended; asking again is refused, and the socket stays open.
    assert (await subscribe(comm, OPS, "c"))["code"] == "forbidden"
    await comm.send_json_to({"type": "unsubscribe", "id": "d", "topic": "prices:KEPT"})
    assert (await comm.receive_json_from(WAIT)) == {
        "type": "unsubscribed",
        "id": "d",
        "topic": "prices:KEPT",
    }
    await comm.disconnect()


async def test_a_socket_keeps_its_staff_subscription_when_another_right_goes(runtime) -> None:
    user = await database_sync_to_async(operator)(VIEW_OPERATIONS, DISCONNECT)
    comm = await stream(user)
    assert (await subscribe(comm, OPS))["type"] == "subscribed"
    await database_sync_to_async(lambda: user.user_permissions.remove(permission(DISCONNECT)))()
    # Checked again and still allowed: nothing ends (publications may still come).
    while not await comm.receive_nothing(QUIET):
        assert (await comm.receive_json_from(WAIT))["type"] == "pub"
    await comm.disconnect()


async def test_a_subscribe_crossing_the_loss_of_the_right_is_ended_once_made(
    runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right is checked, then taken away (and the socket told) before the subscription
    exists: the subscription is checked again once made, and ended."""
    checked, proceed = threading.Event(), threading.Event()
    told = asyncio.Event()
    check, recheck = handlers._readable_now, handlers.rights_changed

    def slow_check(*args: Any) -> Any:
        try:
            return check(*args)
        finally:
            checked.set()
            proceed.wait(WAIT)

    async def observed_recheck(consumer: Any) -> None:
        await recheck(consumer)
        told.set()

    monkeypatch.setattr(handlers, "_readable_now", slow_check)
    monkeypatch.setattr(handlers, "rights_changed", observed_recheck)
    user = await database_sync_to_async(operator)(VIEW_OPERATIONS)
    comm = await stream(user)
    await comm.send_json_to({"type": "subscribe", "id": "s", "topic": OPS})
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, checked.wait, WAIT)
    await database_sync_to_async(lambda: user.user_permissions.clear())()
    await asyncio.wait_for(told.wait(), WAIT)
    proceed.set()
    assert (await comm.receive_json_from(WAIT))["type"] == "subscribed"
    assert await ended(comm, OPS) == {"type": "unsubscribed", "topic": OPS, "reason": "forbidden"}
    await comm.disconnect()


async def test_subscribing_again_without_the_right_ends_what_the_socket_holds(runtime) -> None:
    """A change that sends no signal (`QuerySet.update`) is noticed at the next subscribe
    to that topic: refused, and the subscription held is ended too."""
    user = await database_sync_to_async(operator)(VIEW_OPERATIONS)
    comm = await stream(user)
    assert (await subscribe(comm, OPS, "a"))["type"] == "subscribed"
    await database_sync_to_async(lambda: User.objects.filter(pk=user.pk).update(is_staff=False))()
    await comm.send_json_to({"type": "subscribe", "id": "b", "topic": OPS})
    seen: list[dict[str, Any]] = []
    while len([f for f in seen if f["type"] != "pub"]) < 2:
        seen.append(await comm.receive_json_from(WAIT))
    answers = [f for f in seen if f["type"] != "pub"]
    assert {"type": "unsubscribed", "topic": OPS, "reason": "forbidden"} in answers
    assert any(f["type"] == "error" and f["code"] == "forbidden" for f in answers)
    await comm.disconnect()
