"""Attachments held by messages (PROTOCOL 10): claimed by a send, shown with the message,
purged with it. The upload and download endpoints and the storage of the bytes are
chat/uploads.py's; this module is what the one write path (chat/sends.py) and the
readers need: raw statements joining the send path's round trips, the representation,
and the removal of the files once the deleting transaction committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.core.files.storage import default_storage
from django.db import connection

from monitoring import metrics
from realtime.models import Attachment
from realtime.node.db import any_of, is_postgres, values_table

log = logging.getLogger("tether.attachments")

MAX_PER_MESSAGE = 10


def url(attachment_id: str) -> str:
    return f"/api/attachments/{attachment_id}/"


def represent(attachment_id: str, name: str, size: int, content_type: str) -> dict[str, Any]:
    """An attachment as a message shows it (PROTOCOL 10)."""
    return {
        "id": attachment_id,
        "name": name,
        "size": size,
        "content_type": content_type,
        "url": url(attachment_id),
    }


def attachment_repr(attachment: Attachment) -> dict[str, Any]:
    return represent(attachment.id, attachment.name, attachment.size, attachment.content_type)


def valid_ids(value: Any) -> bool:
    """`attachments` of a send: a list of at most 10 distinct attachment ids."""
    return (
        isinstance(value, list)
        and len(value) <= MAX_PER_MESSAGE
        and all(isinstance(a, str) and 1 <= len(a) <= 24 and "\x00" not in a for a in value)
        and len(set(value)) == len(value)
    )


@dataclass(frozen=True, slots=True)
class Found:
    """An attachment as the send path reads it, under lock, before claiming it."""

    id: str
    conversation_id: str
    uploader_id: int
    message_id: str | None
    name: str
    size: int
    content_type: str
    created_at: Any

    def shown(self) -> dict[str, Any]:
        return represent(self.id, self.name, self.size, self.content_type)


def _table() -> str:
    return connection.ops.quote_name(Attachment._meta.db_table)


def lookup(cursor: Any, ids: list[str]) -> Callable[[], dict[str, Found]]:
    """The named attachments, locked on PostgreSQL until the batch commits (a removal of
    unheld ones waits); read the result after the round trip."""
    if not ids:
        return dict
    where, params = any_of("id", sorted(set(ids)))
    lock = " FOR UPDATE" if is_postgres() else ""
    cursor.execute(
        "SELECT id, conversation_id, uploader_id, message_id, name, size, content_type, "
        f"created_at FROM {_table()} WHERE {where}{lock}",
        params,
    )
    return lambda: {row[0]: Found(*row) for row in cursor.fetchall()}


def claim(cursor: Any, held: list[tuple[str, str]]) -> Callable[[], int]:
    """Give each (attachment, message) its message, only where no message holds it yet;
    the number claimed, read after the round trip (fewer than asked: another send
    claimed one meanwhile, and the batch must roll back)."""
    if not held:
        return lambda: 0
    table, params = values_table([("aid", "text"), ("mid", "text")], sorted(held))
    cursor.execute(
        f"UPDATE {_table()} SET message_id = v.mid FROM ({table}) AS v "
        f"WHERE {_table()}.id = v.aid AND {_table()}.message_id IS NULL "
        f"RETURNING {_table()}.id",
        params,
    )
    return lambda: len(cursor.fetchall())


def purge(cursor: Any, message_ids: list[str]) -> Callable[[], list[str]]:
    """Delete the rows of the attachments these messages hold; the storage names of
    their files, read after the round trip (remove them once committed: `delete_files`)."""
    if not message_ids:
        return list
    where, params = any_of("message_id", sorted(set(message_ids)))
    cursor.execute(f"DELETE FROM {_table()} WHERE {where} RETURNING file", params)
    return lambda: [name for (name,) in cursor.fetchall() if name]


def shown_in_order(found: Iterable[Found]) -> list[dict[str, Any]]:
    """A new message's attachments as replays list them: in upload order."""
    return [f.shown() for f in sorted(found, key=lambda f: (str(f.created_at), f.id))]


def delete_files(names: Iterable[str]) -> None:
    """Delete these storage names once the rows that held them are committed (a
    message's delete, the removal of unclaimed uploads); one already gone is no
    error. A storage failure is logged and counted (the file is an orphan then),
    never raised: the rows are gone, so the bytes are no longer served."""
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except FileNotFoundError:
            pass
        except Exception:
            metrics.ATTACHMENT_FILE_DELETE_FAILURES.inc()
            log.exception("could not delete the attachment file %s", name)


def for_messages(message_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The attachments of these messages, shown, in upload order (replays read them
    with the rows: a deleted message holds none)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if not message_ids:
        return out
    rows = (
        Attachment.objects.filter(message_id__in=message_ids)
        .order_by("created_at", "id")
        .values_list("message_id", "id", "name", "size", "content_type")
    )
    for mid, aid, name, size, content_type in rows:
        out.setdefault(mid, []).append(represent(aid, name, size, content_type))
    return out
