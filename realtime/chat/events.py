"""The one way out for chat news (docs/architecture.md, "One way out for events").

Everything the members' sockets on other nodes must hear of leaves through a
function here, and nothing else in chat/ publishes to the channel layer: a
message stored, members joined or left, a read receipt, typing, a presence
change. State changes leave after their commit: the sync functions called inside
a transaction hand themselves to `transaction.on_commit`; the async ones are
called once the change is committed. Webhooks, Web Push and Django signals hook
in here: the outbox's rows are written by the functions called inside the
change's transaction (and by the batched send path in its own round trips,
chat/sends.py), the signals are sent after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction

from realtime import signals
from realtime.chat import presence
from realtime.chat.representations import message_event
from realtime.hooks import outbox
from realtime.hooks.node import hooks_node
from realtime.models import Membership, Message
from realtime.models import Presence as PresenceRow
from realtime.node import control
from realtime.node.hub import PRESENCE_GROUP, hub_layer
from realtime.node.layer_compat import group_send_many
from realtime.protocol import encode, now_ms, user_repr

log = logging.getLogger("tether.events")

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
    message per conversation and node, sent together; the webhook task is woken (the
    outbox rows were written with the messages)."""
    await group_send_many(
        hub_layer(),
        [
            (conversation_group(cid), {"type": HUB_MESSAGE, "key": cid, "items": items})
            for cid, items in runs.items()
        ],
    )
    hooks_node.wake()


async def messages_signalled(stored: Sequence[Message]) -> None:
    """`message_event_stored` for each committed message (senders loaded), when
    anything listens."""
    if signals.message_event_stored.has_listeners():
        for message in stored:
            _logged(
                await signals.message_event_stored.asend_robust(
                    sender=Message, event=message_event(message)
                )
            )


def _logged(responses: list[tuple[Any, Any]]) -> None:
    """A signal receiver that raised is logged; the change is committed regardless."""
    for receiver, response in responses:
        if isinstance(response, Exception):
            log.error("signal receiver %r failed", receiver, exc_info=response)


def _after_commit(send: Callable[[], Any]) -> None:
    # Robust: once committed, a layer that fails loses only the news, which the
    # nodes' head checks and the clients' next `sync` make good; the request that
    # made the change must not fail for it (Django logs the error).
    transaction.on_commit(send, robust=True)


def message_stored(message: Message, text: str) -> None:
    """From sync code (REST, commands): out once the storing transaction commits."""
    run = {message.conversation_id: [(message.seq, text)]}
    _after_commit(lambda: async_to_sync(messages_stored)(run))
    if signals.message_event_stored.has_listeners():
        _after_commit(
            lambda: _logged(
                signals.message_event_stored.send_robust(
                    sender=Message, event=message_event(message)
                )
            )
        )


def _member_news(
    conversation_id: str, user_ids: list[int], event_type: str, signal: Any
) -> Callable[[], None]:
    """Inside the membership change's transaction: its outbox rows (`member.joined` /
    `member.left`, in the conversation's order); returns what sends the signal
    after the commit."""
    wanted = outbox.enabled() or signal.has_listeners()
    users = (
        [user_repr(u) for u in get_user_model().objects.filter(pk__in=user_ids).order_by("pk")]
        if wanted
        else []
    )
    if outbox.enabled():
        ts = now_ms()
        outbox.record(
            [
                outbox.event(
                    event_type, conversation_id, {"conversation": conversation_id, "user": u}, ts
                )
                for u in users
            ]
        )

    def after_commit() -> None:
        hooks_node.wake()
        for user in users if signal.has_listeners() else []:
            _logged(signal.send_robust(sender=Membership, conversation=conversation_id, user=user))

    return after_commit


def members_joined(conversation_id: str, user_ids: list[int]) -> None:
    """After commit, every open chat socket of these users subscribes and gets `joined`;
    the backend hears of each (outbox, `member_joined`)."""
    message = {"type": "tether.joined", "conversation": conversation_id}
    _after_commit(lambda: control.send_where(message, user_id__in=user_ids, endpoint="chat"))
    _after_commit(
        _member_news(conversation_id, user_ids, outbox.MEMBER_JOINED, signals.member_joined)
    )


def member_left(conversation_id: str, user_id: int) -> None:
    """After commit, every open chat socket of this user unsubscribes and gets `left`;
    the backend hears of it (outbox, `member_left`)."""
    message = {"type": "tether.left", "conversation": conversation_id}
    _after_commit(lambda: control.send_where(message, user_id=user_id, endpoint="chat"))
    _after_commit(_member_news(conversation_id, [user_id], outbox.MEMBER_LEFT, signals.member_left))


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
) -> tuple[str | None, dict[str, Any], list[int], list[str], int]:
    ts = now_ms()
    shown: dict[str, Any] = {}

    def inside(status: str) -> None:
        # In the transaction that stores the change: its outbox row commits with it.
        shown.update(user_repr(get_user_model().objects.get(pk=user_id)))
        if outbox.enabled():
            kind = outbox.PRESENCE_ONLINE if status == presence.ONLINE else outbox.PRESENCE_OFFLINE
            outbox.record(
                [outbox.event(kind, outbox.presence_key(user_id), {"user": shown, "ts": ts}, ts)]
            )

    status = presence.update(user_id, on_change=inside)
    if status is None:
        return None, {}, [], [], ts
    return status, shown, presence.audience(user_id), presence.conversations_of(user_id), ts


async def presence_changed(user_id: int) -> None:
    """Evaluate a user's status and, on a change, tell everyone sharing a conversation,
    the backend (outbox, written with the change) and `presence_changed` receivers.

    The user's conversations travel along: a member of the audience removed from
    them before the news arrives no longer hears it (chat/fanout.py, `still_shares`)."""
    status, user, audience, shared, ts = await _presence_change(user_id)
    if status is None:
        return
    hooks_node.wake()
    if audience:
        frame = {"type": "presence", "user": user, "status": status, "ts": ts}
        await hub_layer().group_send(
            PRESENCE_GROUP,
            {
                "type": HUB_PRESENCE,
                "text": encode(frame),
                "audience": audience,
                "conversations": shared,
            },
        )
    if signals.presence_changed.has_listeners():
        _logged(
            await signals.presence_changed.asend_robust(
                sender=PresenceRow, user=user, status=status, ts=ts
            )
        )
