"""The one way out for chat news (docs/architecture.md, "One way out for events").

Everything the members' sockets on other nodes must hear of leaves through a
function here, and nothing else in chat/ publishes to the channel layer: a
message stored, members joined or left, a read receipt, typing, a presence
change. State changes leave after their commit: the sync functions called inside
a transaction hand themselves to `transaction.on_commit`; the async ones are
called once the change is committed. Webhooks, Web Push and Django signals hook
in here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction

from realtime.chat import presence
from realtime.models import Message
from realtime.node import control
from realtime.node.hub import PRESENCE_GROUP, hub_layer
from realtime.node.layer_compat import group_send_many
from realtime.protocol import encode, now_ms, user_repr

Run = list[tuple[int, str]]  # (seq, encoded `message` frame) in increasing seq

# What leaves over the hub, and chat/fanout.py receives on each node.
HUB_MESSAGE = "hub.message"
HUB_EVENT = "hub.event"
HUB_PRESENCE = "hub.presence"


def conversation_group(conversation_id: str) -> str:
    """The hub group of a conversation's news (joined by nodes with members online)."""
    return f"conv.{conversation_id}"


async def messages_stored(runs: dict[str, Run]) -> None:
    """Committed messages of one or more conversations (a batch of sends): one layer
    message per conversation and node, sent together."""
    await group_send_many(
        hub_layer(),
        [
            (conversation_group(cid), {"type": HUB_MESSAGE, "key": cid, "items": items})
            for cid, items in runs.items()
        ],
    )


def _after_commit(send: Callable[[], Any]) -> None:
    # Robust: once committed, a layer that fails loses only the news, which the
    # nodes' head checks and the clients' next `sync` make good; the request that
    # made the change must not fail for it (Django logs the error).
    transaction.on_commit(send, robust=True)


def message_stored(message: Message, text: str) -> None:
    """From sync code (REST, commands): out once the storing transaction commits."""
    run = {message.conversation_id: [(message.seq, text)]}
    _after_commit(lambda: async_to_sync(messages_stored)(run))


def members_joined(conversation_id: str, user_ids: list[int]) -> None:
    """After commit, every open chat socket of these users subscribes and gets `joined`."""
    message = {"type": "tether.joined", "conversation": conversation_id}
    _after_commit(lambda: control.send_where(message, user_id__in=user_ids, endpoint="chat"))


def member_left(conversation_id: str, user_id: int) -> None:
    """After commit, every open chat socket of this user unsubscribes and gets `left`."""
    message = {"type": "tether.left", "conversation": conversation_id}
    _after_commit(lambda: control.send_where(message, user_id=user_id, endpoint="chat"))


async def _to_members(conversation_id: str, frame: dict[str, Any], exclude_user: int) -> None:
    """A frame for the members' sockets, not sequenced, not for its author's."""
    await hub_layer().group_send(
        conversation_group(conversation_id),
        {
            "type": HUB_EVENT,
            "key": conversation_id,
            "text": encode(frame),
            "exclude_user": exclude_user,
        },
    )


async def read_receipt(conversation_id: str, reader: Any, seq: int) -> None:
    """`reader` has read up to `seq` (committed): a `receipt` for the other members."""
    frame = {
        "type": "receipt",
        "conversation": conversation_id,
        "user": user_repr(reader),
        "seq": seq,
    }
    await _to_members(conversation_id, frame, exclude_user=reader.pk)


async def typing(conversation_id: str, user: Any) -> None:
    """`user` is typing: a `typing` frame for the other members (never stored)."""
    frame = {"type": "typing", "conversation": conversation_id, "user": user_repr(user)}
    await _to_members(conversation_id, frame, exclude_user=user.pk)


@database_sync_to_async
def _presence_change(
    user_id: int,
) -> tuple[str | None, dict[str, Any], list[int], list[str]]:
    status = presence.update(user_id)
    if status is None:
        return None, {}, [], []
    user = get_user_model().objects.get(pk=user_id)
    return status, user_repr(user), presence.audience(user_id), presence.conversations_of(user_id)


async def presence_changed(user_id: int) -> None:
    """Evaluate a user's status and, on a change, tell everyone sharing a conversation.

    The user's conversations travel along: a member of the audience removed from
    them before the news arrives no longer hears it (chat/fanout.py, `still_shares`)."""
    status, user, audience, shared = await _presence_change(user_id)
    if status is None or not audience:
        return
    frame = {"type": "presence", "user": user, "status": status, "ts": now_ms()}
    await hub_layer().group_send(
        PRESENCE_GROUP,
        {
            "type": HUB_PRESENCE,
            "text": encode(frame),
            "audience": audience,
            "conversations": shared,
        },
    )
