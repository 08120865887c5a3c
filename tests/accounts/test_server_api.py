"""The backend API (PROTOCOL 12): service tokens, scopes, and each row (the chat rows' own
rules in test_server_chat.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts import credentials
from accounts.models import ApiToken, User
from realtime.models import Presence

pytestmark = pytest.mark.django_db


@pytest.fixture
def service() -> User:
    return User.objects.create_user("backend", is_staff=True)


def client(user: User, *scopes: str) -> APIClient:
    api = APIClient()
    _, raw = credentials.issue_token(user, name="service", scopes=scopes)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api


ROWS: list[tuple[str, str, str, Any]] = [
    ("users", "put", "/api/server/users/app-1/", {"username": "ann"}),
    ("connections", "post", "/api/server/users/app-1/disconnect/", {}),
    ("presence", "get", "/api/server/presence/?users=1", None),
    ("chat", "post", "/api/server/conversations/", {"kind": "group", "title": "t", "members": []}),
    ("chat", "post", "/api/server/conversations/k0/members/", {"user": 1}),
    ("chat", "delete", "/api/server/conversations/k0/members/1/", None),
    ("chat", "post", "/api/server/conversations/k0/messages/", {"id": "a", "body": "b"}),
    (
        "publish",
        "post",
        "/api/server/publish/",
        {"publications": [{"topic": "prices:X", "data": 1}]},
    ),
]


@pytest.mark.parametrize(("scope", "method", "path", "body"), ROWS)
def test_each_row_needs_its_scope_even_for_staff(service: User, scope, method, path, body) -> None:
    others = [s for s in ("publish", "chat", "users", "presence", "connections") if s != scope]
    r = getattr(client(service, *others), method)(path, body, format="json")
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    r = getattr(APIClient(), method)(path, body, format="json")
    assert (r.status_code, r.json()["error"]) == (401, "not_authenticated")


def test_put_user_creates_then_updates_by_external_id(service: User) -> None:
    api = client(service, "users")
    r = api.put("/api/server/users/app-7/", {"username": "Nora"}, format="json")
    assert r.status_code == 201
    created = r.json()
    assert created["username"] == "Nora" and created["external_id"] == "app-7"
    r = api.put(
        "/api/server/users/app-7/", {"username": "nora2", "is_active": False}, format="json"
    )
    assert r.status_code == 200 and r.json()["id"] == created["id"]
    user = User.objects.get(external_id="app-7")
    assert (user.username, user.is_active, user.has_usable_password()) == ("nora2", False, False)
    User.objects.create_user("Taken")
    for body, field in (
        ({"username": "taken"}, "username"),  # whatever its case
        ({"username": "no spaces"}, "username"),
        ({"is_active": "yes"}, "is_active"),
    ):
        r = api.put("/api/server/users/app-7/", body, format="json")
        assert (r.status_code, r.json()["field"]) == (400, field)
    r = api.put("/api/server/users/app-8/", {}, format="json")
    assert r.status_code == 201 and r.json()["username"].startswith("ext-")


def test_disconnect_answers_how_many_and_checks_the_code(service: User) -> None:
    api = client(service, "connections", "users")
    api.put("/api/server/users/app-9/", {}, format="json")
    r = api.post("/api/server/users/app-9/disconnect/", {"code": 4401}, format="json")
    assert r.status_code == 200 and r.json() == {"closed": 0}
    r = api.post("/api/server/users/app-9/disconnect/", {"code": 1000}, format="json")
    assert (r.status_code, r.json()["field"]) == (400, "code")
    r = api.post("/api/server/users/nobody/disconnect/", {}, format="json")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")


def test_presence_by_id_and_external_id(service: User) -> None:
    ann = User.objects.create_user("ann2", external_id="ext-ann")
    bob = User.objects.create_user("bob2")
    Presence.objects.create(user=ann, online=True)
    api = client(service, "presence")
    r = api.get(f"/api/server/presence/?users={bob.pk}&external_ids=ext-ann,unknown")
    assert r.status_code == 200
    assert r.json() == {"presence": {str(bob.pk): "offline", str(ann.pk): "online"}}
    r = api.get("/api/server/presence/?users=" + ",".join(["1"] * 501))
    assert r.status_code == 400
    r = api.get("/api/server/presence/?users=abc")
    assert (r.status_code, r.json()["field"]) == (400, "users")


def test_publish_many_in_order_or_none(service: User) -> None:
    api = client(service, "publish")
    pubs = [{"topic": "prices:SRV", "data": {"i": i}} for i in range(3)]
    r = api.post("/api/server/publish/", {"publications": pubs}, format="json")
    assert r.status_code == 201
    assert [x["offset"] for x in r.json()["results"]] == [1, 2, 3]
    bad = [*pubs, {"topic": "nope", "data": 1}]
    r = api.post("/api/server/publish/", {"publications": bad}, format="json")
    assert (r.status_code, r.json()["field"]) == (400, "publications[3].topic")
    r = api.get("/api/topics/prices:SRV/history/")
    assert r.json()["offset"] == 3  # nothing of the refused batch was published
    for body in ({"publications": []}, {"publications": [{"topic": "prices:SRV"}] * 1}, {}):
        r = api.post("/api/server/publish/", body, format="json")
        assert r.status_code == 400, body


def test_issue_token_takes_scopes_and_publish_as_a_synonym(service: User, capsys) -> None:
    call_command("issue_token", "backend", "--scope", "chat,users", "--publish")
    raw = capsys.readouterr().out.strip()
    assert credentials.verify_token(raw).scope_set == {"chat", "users", "publish"}
    with pytest.raises(CommandError):
        call_command("issue_token", "backend", "--scope", "everything")
    assert ApiToken.objects.count() == 1
