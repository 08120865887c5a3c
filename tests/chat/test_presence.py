"""Presence service: transitions from live records, queries, and who hears of a change."""

from __future__ import annotations

import itertools

import pytest

from accounts.models import User
from realtime.chat import conversations, presence
from realtime.models import LiveConnection, Node, Presence
from tests.support.names import unique

pytestmark = pytest.mark.django_db

_ids = itertools.count(1)


@pytest.fixture
def node() -> Node:
    """A node record for the sockets' records to hang on."""
    return Node.objects.create(name=unique("node-"))


def make_user(prefix: str = "p") -> User:
    """A fresh user with a unique name."""
    return User.objects.create_user(username=unique(prefix), password="pw-Not-common-123")


def open_socket(node: Node, user: User, endpoint: str = "chat") -> LiveConnection:
    """A live connection record, as the registry writes one at admission."""
    return LiveConnection.objects.create(
        id=f"c_{next(_ids)}", node=node, user=user, endpoint=endpoint, channel_name="x"
    )


def test_first_socket_is_online_once_and_last_gone_offline_once(node: Node) -> None:
    """Only the first record's arrival and the last one's departure are changes."""
    user = make_user()
    assert presence.update(user.pk) is None  # no socket, never announced: nothing changed
    first = open_socket(node, user)
    assert presence.update(user.pk) == presence.ONLINE
    assert presence.update(user.pk) is None  # asked again: still online, no second `online`
    second = open_socket(node, user)
    assert presence.update(user.pk) is None
    first.delete()
    assert presence.update(user.pk) is None  # one socket left
    second.delete()
    assert presence.update(user.pk) == presence.OFFLINE
    assert presence.update(user.pk) is None
    assert Presence.objects.get(user=user).online is False


def test_stream_sockets_do_not_make_a_user_online(node: Node) -> None:
    """PROTOCOL 6: presence counts `/ws/chat/` sockets only."""
    user = make_user()
    open_socket(node, user, endpoint="stream")
    assert presence.update(user.pk) is None
    assert presence.query([user.pk]) == {str(user.pk): presence.OFFLINE}
    open_socket(node, user)
    assert presence.update(user.pk) == presence.ONLINE


def test_a_reaped_node_takes_its_users_offline(node: Node) -> None:
    """Records dropped with their node (cascade) count as gone."""
    user = make_user()
    open_socket(node, user)
    assert presence.update(user.pk) == presence.ONLINE
    node.delete()
    assert presence.update(user.pk) == presence.OFFLINE


def test_query_answers_each_id_including_ones_no_user_can_have(node: Node) -> None:
    """Online, offline, unknown and unstorable ids each get an answer, keyed as strings."""
    online, offline, never = make_user(), make_user(), make_user()
    open_socket(node, online)
    open_socket(node, offline)
    presence.update(online.pk)
    presence.update(offline.pk)
    LiveConnection.objects.filter(user=offline).delete()
    presence.update(offline.pk)
    odd = [2**63 - 1, 2**63, 2**70, -1, -(2**63), -(2**70), 0]
    asked = [online.pk, offline.pk, never.pk, *odd]
    answer = presence.query(asked)
    assert answer == {
        str(online.pk): "online",
        str(offline.pk): "offline",
        str(never.pk): "offline",
        **{str(uid): "offline" for uid in odd},
    }
    assert presence.query([]) == {}


def test_audience_is_exactly_the_co_members() -> None:
    """Users sharing a conversation, once each; not the user, not strangers."""
    alice, bob, carol, dave, stranger = (make_user() for _ in range(5))
    conversations.check_create_group(alice, "one", [bob.pk, carol.pk])
    conversations.check_create_group(alice, "two", [bob.pk])  # bob shares two
    conversations.check_create_direct(dave, [alice.pk])
    conversations.check_create_group(stranger, "apart", [bob.pk])  # bob's, not alice's
    audience = presence.audience(alice.pk)
    assert sorted(audience) == sorted([bob.pk, carol.pk, dave.pk])
    assert len(audience) == len(set(audience))
    assert sorted(presence.audience(carol.pk)) == sorted([alice.pk, bob.pk])
    assert sorted(presence.audience(bob.pk)) == sorted([alice.pk, carol.pk, stranger.pk])


def test_audience_of_a_user_alone_is_empty() -> None:
    """A user in no conversation, or alone in one, is heard by nobody."""
    loner = make_user()
    assert presence.audience(loner.pk) == []
    conversations.check_create_group(loner, "solo", [])
    assert presence.audience(loner.pk) == []
