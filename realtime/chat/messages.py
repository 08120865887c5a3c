"""Messages: idempotent send with gap-free seq, history, ranges for sync and gap fill."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from realtime.chat import attachments
from realtime.chat.conversations import access_conversation
from realtime.chat.representations import message_frame, message_repr
from realtime.models import Conversation, Membership, Message
from realtime.protocol import (
    MAX_ID_CHARS,
    Code,
    TetherError,
    bad_request,
    encode,
    non_negative,
    valid_id,
)

MAX_HISTORY_LIMIT = 100
DEFAULT_HISTORY_LIMIT = 50


def new_message_id() -> str:
    return "m_" + secrets.token_hex(10)


@dataclass(frozen=True)
class Sent:
    """A stored message and whether this send repeated an earlier one."""

    message: Message
    duplicate: bool

    def ack(self, request_id: str | None) -> dict[str, Any]:
        m = self.message
        out: dict[str, Any] = {"type": "ack"}
        if request_id is not None:
            out["id"] = request_id
        out.update(
            conversation=m.conversation_id,
            seq=m.seq,
            message_id=m.id,
            ts=m.ts,
            duplicate=self.duplicate,
        )
        return out


def stored(sender_id: int | None, client_id: str, conversation_id: str | None) -> Message | None:
    """The message stored under a send's key: a member's is theirs across conversations,
    a system message's (no sender) its conversation's."""
    rows = Message.objects.select_related("sender").filter(client_id=client_id)
    if sender_id is None:
        return rows.filter(sender__isnull=True, conversation_id=conversation_id).first()
    return rows.filter(sender_id=sender_id).first()


def validate_key(client_id: Any, frame_type: str = "send") -> None:
    """The idempotency key every event carries (PROTOCOL 6, 10)."""
    if not valid_id(client_id):
        raise bad_request(
            "id", f"is required on {frame_type}: a string of 1 to {MAX_ID_CHARS} characters"
        )
    # PostgreSQL cannot store NUL in text (a 500 otherwise); no key or message needs it.
    if "\x00" in client_id:
        raise bad_request("id", "must not contain NUL characters")


def validate_send(
    client_id: Any, body: Any, may_be_empty: bool = False, key_of: str = "send"
) -> None:
    """The checks of a `send` (or an `edit`'s body) that need no database (PROTOCOL 6);
    an empty body only for a message with attachments (PROTOCOL 10)."""
    validate_key(client_id, key_of)
    if not isinstance(body, str):
        raise bad_request("body", "is required: a string")
    if not body.strip() and not may_be_empty:
        raise bad_request("body", "must not be empty")
    if "\x00" in body:
        raise bad_request("body", "must not contain NUL characters")
    if len(body) > settings.MAX_BODY_CHARS:
        raise TetherError(
            Code.TOO_LARGE,
            f"body: {len(body)} characters, at most {settings.MAX_BODY_CHARS}",
            max_body_chars=settings.MAX_BODY_CHARS,
        )


def table_sql(template: str) -> str:
    """Fill in quoted table names: the send path is raw SQL, the hottest code here."""
    names = {
        "conversation": Conversation._meta.db_table,
        "message": Message._meta.db_table,
        "membership": Membership._meta.db_table,
    }
    return template.format(**{k: connection.ops.quote_name(v) for k, v in names.items()})


def encoded_frame(message: Message) -> str:
    """The `message` frame, encoded once for every node and socket."""
    return encode(message_frame(message))


def with_attachments(rows: list[Message]) -> list[Message]:
    """Rows read from the store with their attachments (`shown_attachments`): a replay
    shows each message event's current state (PROTOCOL 10)."""
    held = [m.id for m in rows if m.kind == Message.MESSAGE and not m.deleted]
    if held:
        found = attachments.for_messages(held)
        for m in rows:
            m.shown_attachments = found.get(m.id, [])  # type: ignore[attr-defined]
    return rows


def read_range(conversation_id: str, after: int, upto: int) -> list[tuple[int, str]]:
    """Encoded `message` frames with after < seq <= upto, in order (sync and gap fill),
    each event with its current state."""
    rows = with_attachments(
        list(
            Message.objects.select_related("sender")
            .filter(conversation_id=conversation_id, seq__gt=after, seq__lte=upto)
            .order_by("seq")
        )
    )
    return [(m.seq, encode(message_frame(m))) for m in rows]


def current(message_id: str) -> dict[str, Any]:
    """One stored event as REST answers with it: its representation as read now."""
    row = Message.objects.select_related("sender").get(pk=message_id)
    return message_repr(with_attachments([row])[0])


def _position(value: Any, name: str) -> int | None:
    return None if value is None else non_negative(value, name)


def history(
    user_id: int, conversation_id: Any, before: Any, after: Any, limit: Any
) -> dict[str, Any]:
    """Messages in increasing seq: before a seq (the latest by default) or after one."""
    before = _position(before, "before")
    after = _position(after, "after")
    if limit is None:
        limit = DEFAULT_HISTORY_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise bad_request("limit", f"must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    conversation, _ = access_conversation(user_id, conversation_id)
    rows = Message.objects.select_related("sender").filter(conversation=conversation)
    if after is not None:
        if before is not None:
            rows = rows.filter(seq__lt=before)
        page = list(rows.filter(seq__gt=after).order_by("seq")[: limit + 1])
        has_more = len(page) > limit
        page = page[:limit]
    else:
        if before is not None:
            rows = rows.filter(seq__lt=before)
        page = list(rows.order_by("-seq")[: limit + 1])
        has_more = len(page) > limit
        page = list(reversed(page[:limit]))
    return {"messages": [message_repr(m) for m in with_attachments(page)], "has_more": has_more}


def mark_read(user_id: int, conversation_id: Any, seq: Any) -> int | None:
    """Store a read position that never moves backwards; the new one if it moved."""
    non_negative(seq, "seq")
    conversation, membership = access_conversation(user_id, conversation_id)
    seq = min(seq, conversation.last_seq)
    moved = Membership.objects.filter(pk=membership.pk, read_seq__lt=seq).update(read_seq=seq)
    return seq if moved else None
