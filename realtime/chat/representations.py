"""The shapes shared by REST and the sockets (PROTOCOL 9): conversation, message
(the user's is `protocol.user_repr`)."""

from __future__ import annotations

from typing import Any

from realtime.models import Conversation, Message
from realtime.protocol import user_repr


def message_repr(message: Message) -> dict[str, Any]:
    """The `message` frame's fields without `type`; the sender must be loaded. A
    system message's sender is null (PROTOCOL 12)."""
    return {
        "conversation": message.conversation_id,
        "seq": message.seq,
        "message_id": message.id,
        "client_id": message.client_id,
        "sender": None if message.sender_id is None else user_repr(message.sender),
        "body": message.body,
        "ts": message.ts,
    }


def message_event(message: Message) -> dict[str, Any]:
    """The event as the backend hears of it (webhook `conversation.event`, the
    `message_event_stored` signal): the `message` frame's fields without `type`,
    `kind` included (PROTOCOL 10, 13)."""
    event = message_repr(message)
    event.setdefault("kind", "message")
    return event


def message_frame(message: Message) -> dict[str, Any]:
    return {"type": "message", **message_repr(message)}


def conversation_repr(
    conversation: Conversation, members: list[Any], read_seq: int | None
) -> dict[str, Any]:
    """A conversation with its members and, for the caller, read position and unread count."""
    out: dict[str, Any] = {
        "id": conversation.id,
        "kind": conversation.kind,
        "title": conversation.title,
        "members": [user_repr(u) for u in members],
        "created_by": (
            None if conversation.created_by_id is None else user_repr(conversation.created_by)
        ),
        "last_seq": conversation.last_seq,
    }
    if read_seq is not None:
        out["read_seq"] = read_seq
        out["unread"] = max(0, conversation.last_seq - read_seq)
    return out
