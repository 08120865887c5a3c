"""The shapes shared by REST and the sockets (PROTOCOL 9): conversation, message
(the user's is `protocol.user_repr`)."""

from __future__ import annotations

from typing import Any

from realtime.models import Conversation, Message
from realtime.protocol import user_repr


def message_repr(message: Message) -> dict[str, Any]:
    """The `message` frame's fields without `type`; the sender must be loaded. A
    system message's sender is null (PROTOCOL 12). Every row is an event (PROTOCOL
    10): a `kind: "message"` one carries its state as read with the row (current in
    a replay, as stored in a live frame) and its attachments, which the caller puts
    on the instance as `shown_attachments` (none otherwise); the others name their
    `target`."""
    kind = message.kind
    out: dict[str, Any] = {
        "conversation": message.conversation_id,
        "seq": message.seq,
        "kind": kind,
        "message_id": message.id,
        "client_id": message.client_id,
        "sender": None if message.sender_id is None else user_repr(message.sender),
    }
    if kind == Message.MESSAGE:
        out["body"] = message.body
        out["ts"] = message.ts
        out["reply_to"] = message.reply_to_id
        out["attachments"] = (
            [] if message.deleted else getattr(message, "shown_attachments", None) or []
        )
        out["edited_at"] = message.edited_at
        out["deleted"] = bool(message.deleted)
        out["reactions"] = message.reactions or {}
        return out
    out["target"] = message.target_id
    if kind == Message.REACTION:
        out["emoji"] = message.emoji
        out["on"] = bool(message.reaction_on)
    out["body"] = message.body
    out["ts"] = message.ts
    return out


def message_event(message: Message) -> dict[str, Any]:
    """The event as the backend hears of it (webhook `conversation.event`, the
    `message_event_stored` signal): the `message` frame's fields without `type`,
    `kind` included (PROTOCOL 10, 13)."""
    return message_repr(message)


def message_frame(message: Message) -> dict[str, Any]:
    return {"type": "message", **message_repr(message)}


def conversation_repr(
    conversation: Conversation,
    members: list[Any],
    read_seq: int | None,
    unread: int | None = None,
    read_positions: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A conversation with its members and, for the caller, read position and unread
    count (PROTOCOL 10: `kind: "message"` events of others, not deleted, past the read
    position), and every member's read position (`read_positions`)."""
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
        out["unread"] = max(0, conversation.last_seq - read_seq) if unread is None else unread
    if read_positions is not None:
        out["read_positions"] = read_positions
    return out
