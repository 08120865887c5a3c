"""The backend API's chat rows (PROTOCOL 12): the backend creates conversations it is
not a member of, manages any group's members and posts as a member or as the system."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts import credentials
from accounts.models import User
from realtime.models import Conversation, Membership, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend() -> APIClient:
    service = User.objects.create_user("backend-svc")
    api = APIClient()
    _, raw = credentials.issue_token(service, name="service", scopes=["chat"])
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api


@pytest.fixture
def ann() -> User:
    return User.objects.create_user("ann", external_id="app-ann")


@pytest.fixture
def bob() -> User:
    return User.objects.create_user("bob")


def as_user(user: User) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_a_group_by_the_backend_has_no_creator_and_the_backend_is_no_member(
    backend: APIClient, ann: User, bob: User
) -> None:
    r = backend.post(
        "/api/server/conversations/",
        {"kind": "group", "title": " Ops ", "members": [{"external_id": "app-ann"}, bob.pk]},
        format="json",
    )
    assert r.status_code == 201, r.json()
    body = r.json()
    assert body["created_by"] is None and body["title"] == "Ops" and "read_seq" not in body
    assert [m["id"] for m in body["members"]] == sorted([ann.pk, bob.pk])
    assert body["members"][0]["external_id"] == "app-ann"
    # Members see it as any group, with a null creator.
    mine = as_user(ann).get(f"/api/conversations/{body['id']}/").json()
    assert mine["created_by"] is None and mine["read_seq"] == 0


def test_a_direct_conversation_names_exactly_two_and_is_found_again(
    backend: APIClient, ann: User, bob: User
) -> None:
    new = {"kind": "direct", "members": [ann.pk, {"external_id": "app-ann"}]}
    r = backend.post("/api/server/conversations/", new, format="json")
    assert (r.status_code, r.json()["field"]) == (400, "members")  # the same user twice
    pair = {"kind": "direct", "members": [ann.pk, bob.pk]}
    first = backend.post("/api/server/conversations/", pair, format="json")
    assert first.status_code == 201
    again = as_user(bob).post(
        "/api/conversations/", {"kind": "direct", "members": [ann.pk]}, format="json"
    )
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])


@pytest.mark.parametrize(
    ("members", "status", "field"),
    [
        ([{"external_id": "nobody"}], 404, "members[0].external_id"),
        ([{"external_id": ""}], 400, "members[0].external_id"),
        ([{"id": 1}], 400, "members[0]"),
        ([True], 400, "members[0]"),
        ("1,2", 400, "members"),
    ],
)
def test_bad_member_references_name_the_field(
    backend: APIClient, ann: User, members, status: int, field: str
) -> None:
    r = backend.post(
        "/api/server/conversations/",
        {"kind": "group", "title": "t", "members": members},
        format="json",
    )
    assert (r.status_code, r.json().get("field")) == (status, field), r.json()
    assert not Conversation.objects.exists()


def test_the_backend_adds_and_removes_members_of_any_group(
    backend: APIClient, ann: User, bob: User
) -> None:
    cid = (
        as_user(bob)
        .post("/api/conversations/", {"kind": "group", "title": "bob's"}, format="json")
        .json()["id"]
    )
    path = f"/api/server/conversations/{cid}/members/"
    r = backend.post(path, {"user": {"external_id": "app-ann"}}, format="json")
    assert (r.status_code, r.json()["user"]["id"]) == (201, ann.pk)
    assert backend.post(path, {"user": ann.pk}, format="json").status_code == 200
    assert backend.delete(f"{path}{bob.pk}/").status_code == 204  # even the creator
    assert list(Membership.objects.filter(conversation_id=cid).values_list("user", flat=True)) == [
        ann.pk
    ]
    assert backend.delete(f"{path}{bob.pk}/").json()["error"] == "not_found"
    assert (
        backend.post("/api/server/conversations/k404/members/", {"user": 1}, format="json").json()[
            "error"
        ]
        == "not_found"
    )


def test_system_messages_have_no_sender_and_their_own_key_space(
    backend: APIClient, ann: User, bob: User
) -> None:
    cid = (
        as_user(ann)
        .post(
            "/api/conversations/",
            {"kind": "group", "title": "t", "members": [bob.pk]},
            format="json",
        )
        .json()["id"]
    )
    path = f"/api/server/conversations/{cid}/messages/"
    r = backend.post(path, {"id": "welcome", "body": "Welcome!", "sender": None}, format="json")
    assert r.status_code == 201, r.json()
    first = r.json()
    assert first["sender"] is None and first["seq"] == 1 and first["duplicate"] is False
    again = backend.post(path, {"id": "welcome", "body": "other", "sender": None}, format="json")
    assert again.status_code == 200
    assert again.json()["message_id"] == first["message_id"] and again.json()["duplicate"]
    # A member's key of the same text is theirs, not the system's.
    own = backend.post(path, {"id": "welcome", "body": "hi", "sender": ann.pk}, format="json")
    assert (own.status_code, own.json()["sender"]["id"], own.json()["seq"]) == (201, ann.pk, 2)
    # The same system key in another conversation is another message.
    other = (
        as_user(ann)
        .post("/api/conversations/", {"kind": "group", "title": "u"}, format="json")
        .json()["id"]
    )
    r = backend.post(
        f"/api/server/conversations/{other}/messages/",
        {"id": "welcome", "body": "Welcome!", "sender": None},
        format="json",
    )
    assert (r.status_code, r.json()["seq"]) == (201, 1)
    history = as_user(bob).get(f"/api/conversations/{cid}/messages/").json()["messages"]
    assert (history[0]["seq"], history[0]["sender"]) == (1, None)
    assert Message.objects.filter(sender__isnull=True).count() == 2


def test_a_message_as_a_member_counts_as_their_send(
    backend: APIClient, ann: User, bob: User
) -> None:
    cid = (
        as_user(ann)
        .post("/api/conversations/", {"kind": "group", "title": "t"}, format="json")
        .json()["id"]
    )
    path = f"/api/server/conversations/{cid}/messages/"
    r = backend.post(path, {"id": "x1", "body": "hi", "sender": bob.pk}, format="json")
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")  # bob is no member
    r = backend.post(
        path, {"id": "x1", "body": "hi", "sender": {"external_id": "app-ann"}}, format="json"
    )
    assert r.status_code == 201
    # The same key over the member's own REST path is the same send.
    mine = as_user(ann).post(
        f"/api/conversations/{cid}/messages/", {"id": "x1", "body": "hi"}, format="json"
    )
    assert (mine.status_code, mine.json()["message_id"]) == (200, r.json()["message_id"])
    assert Membership.objects.get(conversation_id=cid, user=ann).read_seq == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"id": "a", "body": "b"}, 400, "sender"),
        ({"id": "a", "body": "", "sender": None}, 400, "body"),
        ({"id": "", "body": "b", "sender": None}, 400, "id"),
        ({"id": "a", "body": "b", "sender": "ann"}, 400, "sender"),
        ({"id": "a", "body": "b", "sender": 999999}, 404, "sender"),
        ({"id": "a", "body": "b", "sender": None, "reply_to": "m_1"}, 400, "reply_to"),
    ],
)
def test_bad_messages_are_refused_and_store_nothing(
    backend: APIClient, ann: User, body: dict, status: int, field: str
) -> None:
    cid = (
        as_user(ann)
        .post("/api/conversations/", {"kind": "group", "title": "t"}, format="json")
        .json()["id"]
    )
    r = backend.post(f"/api/server/conversations/{cid}/messages/", body, format="json")
    assert (r.status_code, r.json().get("field")) == (status, field), r.json()
    assert not Message.objects.exists()
    assert Conversation.objects.get(pk=cid).last_seq == 0


def test_a_system_message_to_no_conversation_is_not_found(backend: APIClient) -> None:
    r = backend.post(
        "/api/server/conversations/k00/messages/",
        {"id": "a", "body": "b", "sender": None},
        format="json",
    )
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
