"""The one write path for messages: sends stored in one transaction per batch.

Socket sends come here in batches (group commit, chat/send_queue.py); a REST
send or a command's is a batch of one (`send`). A send costs a handful of round
trips to the database (membership, the seq bump, the insert, the read position,
the commit); stored together, a batch of a few hundred sends costs about the
same handful. Every rule holds per send, whatever the batch: the same key gives
the first message back (`duplicate`), a non-member gets `forbidden`, seqs are
gap-free because the bump and the insert commit together.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import IntegrityError, connection, transaction

from monitoring import metrics
from realtime.chat import attachments, events, messages
from realtime.chat.conversations import forbidden, no_conversation, valid_conversation_id
from realtime.chat.messages import Sent, table_sql
from realtime.chat.representations import message_event
from realtime.hooks import outbox
from realtime.models import Message
from realtime.node.db import any_of, bound_cursor, is_postgres, values_table
from realtime.protocol import MAX_ID_CHARS, Code, TetherError, bad_request, now_ms, valid_id

Result = Sent | TetherError
T = TypeVar("T")
Reader = Callable[[], T]  # a statement's result, read once its round trip is over


# A send's idempotency key: (sender id, key, None) for a member's, (None, key,
# conversation) for a system message's, whose key space is its conversation.
Key = tuple[int | None, str, str | None]


@dataclass(frozen=True)
class SendRequest:
    """One validated event for the write path: a `send` (kind "message"), or an `edit`,
    `delete` or `react` of a message (PROTOCOL 10): who (None: a system message,
    PROTOCOL 12), where, the idempotency key (one key space for every kind), the
    body, and the kind's own fields. `staff` is an operator acting on a conversation
    they are no member of (the Django admin's *delete messages*)."""

    sender: Any | None
    conversation_id: str
    client_id: str
    body: str
    kind: str = Message.MESSAGE
    target: str | None = None
    emoji: str = ""
    on: bool | None = None
    reply_to: str | None = None
    attachments: tuple[str, ...] = ()
    staff: bool = False

    @property
    def sender_id(self) -> int | None:
        return None if self.sender is None else self.sender.pk

    @property
    def key(self) -> Key:
        if self.sender is None:
            return (None, self.client_id, self.conversation_id)
        return (self.sender.pk, self.client_id, None)

    @property
    def plain(self) -> bool:
        """A message with none of PROTOCOL 10's fields: the insert leaves them to the
        database's defaults."""
        return self.kind == Message.MESSAGE and self.reply_to is None


@dataclass(slots=True)
class _Target:
    """A message event that this batch's edits, deletes, reactions or replies name, as
    read under the conversation's lock, then as the batch changes it."""

    id: str
    conversation_id: str
    kind: str
    sender_id: int | None
    body: str
    edited_at: int | None
    deleted: bool
    reactions: dict[str, list[int]]


def _existing(cursor: Any, keys: set[Key]) -> Reader[dict[Key, Message]]:
    """Messages already stored under these keys (read after the round trip)."""
    columns = "sender_id, client_id, id, conversation_id, seq, body, ts"
    parts: list[str] = []
    params: list[Any] = []
    members = sorted((sid, ckey) for sid, ckey, _ in keys if sid is not None)
    system = sorted((cid, ckey) for sid, ckey, cid in keys if sid is None)
    lookups = [
        (members, ("sid", "bigint"), "(sender_id, client_id)"),
        (system, ("cid", "text"), "sender_id IS NULL AND (conversation_id, client_id)"),
    ]
    for rows, first, matched in lookups:
        if rows:
            table, values = values_table([first, ("ckey", "text")], rows)
            parts.append(
                f"SELECT {columns} FROM {{message}} "
                f"WHERE {matched} IN (SELECT {first[0]}, ckey FROM ({table}) AS v)"
            )
            params += values
    cursor.execute(table_sql(" UNION ALL ".join(parts)), params)
    return lambda: {
        (sender_id, client_id, None if sender_id is not None else cid): Message(
            id=mid,
            conversation_id=cid,
            seq=seq,
            sender_id=sender_id,
            client_id=client_id,
            body=body,
            ts=ts,
        )
        for sender_id, client_id, mid, cid, seq, body, ts in cursor.fetchall()
    }


def _memberships(cursor: Any, pairs: set[tuple[str, int]]) -> Reader[set[tuple[str, int]]]:
    """Which (conversation, user) pairs are memberships (read after the round trip)."""
    if not pairs:  # system messages only: nobody's membership to check
        return set
    table, params = values_table([("cid", "text"), ("uid", "bigint")], sorted(pairs))
    cursor.execute(
        table_sql(
            "SELECT conversation_id, user_id FROM {membership} "
            f"WHERE (conversation_id, user_id) IN (SELECT cid, uid FROM ({table}) AS v)"
        ),
        params,
    )
    return lambda: {(cid, uid) for cid, uid in cursor.fetchall()}


def _bump(
    locks: Any, cursor: Any, counts: dict[str, int]
) -> Reader[tuple[dict[str, int], dict[str, int | None]]]:
    """Add each conversation's count to `last_seq`; the first new seq of each, and each
    one's creator (who may delete any of its messages)."""
    ids = sorted(counts)
    if connection.features.has_select_for_update:
        # Lock in one global order (by id): two nodes' batches sharing
        # conversations then wait for each other instead of deadlocking.
        locks.execute(
            table_sql("SELECT id FROM {conversation} WHERE id = ANY(%b) ORDER BY id FOR UPDATE"),
            [ids],
        )
    table, params = values_table([("cid", "text"), ("n", "bigint")], [(c, counts[c]) for c in ids])
    cursor.execute(
        table_sql(
            f"UPDATE {{conversation}} SET last_seq = last_seq + v.n FROM ({table}) AS v "
            "WHERE {conversation}.id = v.cid RETURNING {conversation}.id, last_seq, created_by_id"
        ),
        params,
    )

    def read() -> tuple[dict[str, int], dict[str, int | None]]:
        rows = cursor.fetchall()
        return (
            {cid: last - counts[cid] + 1 for cid, last, _ in rows},
            {cid: creator for cid, _, creator in rows},
        )

    return read


def _targets(cursor: Any, ids: set[str]) -> Reader[dict[str, _Target]]:
    """The messages named as targets or replied to. Sent after the conversations' lock
    in the same round trip: on PostgreSQL it then reads their state as the last batch
    that changed them committed it (every change to a message's state is an event
    of its conversation, stored under that lock)."""
    if not ids:
        return dict
    where, params = any_of("id", sorted(ids))
    cursor.execute(
        table_sql(
            "SELECT id, conversation_id, kind, sender_id, body, edited_at, deleted, reactions "
            f"FROM {{message}} WHERE {where}"
        ),
        params,
    )

    def read() -> dict[str, _Target]:
        out = {}
        for mid, cid, kind, sender_id, body, edited_at, deleted, reactions in cursor.fetchall():
            if isinstance(reactions, str):  # SQLite: the JSON's text
                reactions = json.loads(reactions)
            out[mid] = _Target(
                mid, cid, kind, sender_id, body, edited_at, bool(deleted), reactions or {}
            )
        return out

    return read


def _first_deletes(cursor: Any, ids: set[str]) -> Reader[dict[str, Message]]:
    """The delete event of each of these messages already deleted (a delete again is
    answered with it)."""
    if not ids:
        return dict
    where, params = any_of("target_id", sorted(ids))
    cursor.execute(
        table_sql(
            "SELECT id, conversation_id, seq, sender_id, client_id, ts, target_id "
            f"FROM {{message}} WHERE kind = 'delete' AND {where} ORDER BY seq"
        ),
        params,
    )

    def read() -> dict[str, Message]:
        out: dict[str, Message] = {}
        for mid, cid, seq, sender_id, client_id, ts, target in cursor.fetchall():
            out.setdefault(
                target,
                Message(
                    id=mid,
                    conversation_id=cid,
                    seq=seq,
                    sender_id=sender_id,
                    client_id=client_id,
                    body="",
                    ts=ts,
                    kind=Message.DELETE,
                    target_id=target,
                ),
            )
        return out

    return read


def _give_back(cursor: Any, unused: dict[str, int]) -> None:
    """Return seqs taken for sends that were not stored (duplicates, forbidden): they
    were the last ones taken, and the rows are still locked by this transaction."""
    if not unused:
        return
    table, params = values_table(
        [("cid", "text"), ("n", "bigint")], [(c, unused[c]) for c in sorted(unused)]
    )
    cursor.execute(
        table_sql(
            f"UPDATE {{conversation}} SET last_seq = last_seq - v.n FROM ({table}) AS v "
            "WHERE {conversation}.id = v.cid"
        ),
        params,
    )


def _insert(cursor: Any, rows: list[Message], plain: bool) -> None:
    """The batch's rows; when all are plain messages, PROTOCOL 10's columns are left to
    their defaults in the database (the common case stays the statement it was)."""
    columns = [
        ("id", "text"),
        ("conversation_id", "text"),
        ("seq", "bigint"),
        ("sender_id", "bigint"),
        ("client_id", "text"),
        ("body", "text"),
        ("ts", "bigint"),
    ]
    values = [
        (m.id, m.conversation_id, m.seq, m.sender_id, m.client_id, m.body, m.ts) for m in rows
    ]
    if not plain:
        columns += [
            ("kind", "text"),
            ("target_id", "text"),
            ("reply_to_id", "text"),
            ("emoji", "text"),
            ("reaction_on", "boolean"),
        ]
        values = [
            (*v, m.kind, m.target_id, m.reply_to_id, m.emoji, m.reaction_on)
            for v, m in zip(values, rows, strict=True)
        ]
    table, params = values_table(columns, values)
    names = ", ".join(name for name, _ in columns)
    cursor.execute(
        table_sql(f"INSERT INTO {{message}} ({names}) SELECT {names} FROM ({table}) AS v"),
        params,
    )


def _update_targets(cursor: Any, targets: list[_Target]) -> None:
    """The state of the messages this batch's events changed, on their own rows."""
    table, params = values_table(
        [
            ("mid", "text"),
            ("body", "text"),
            ("edited_at", "bigint"),
            ("deleted", "boolean"),
            ("reactions", "text"),
        ],
        [
            (t.id, t.body, t.edited_at, t.deleted, json.dumps(t.reactions, ensure_ascii=False))
            for t in sorted(targets, key=lambda t: t.id)
        ],
    )
    reactions = "v.reactions::jsonb" if is_postgres() else "v.reactions"
    cursor.execute(
        table_sql(
            "UPDATE {message} SET body = v.body, edited_at = v.edited_at, "
            f"deleted = v.deleted, reactions = {reactions} FROM ({table}) AS v "
            "WHERE {message}.id = v.mid"
        ),
        params,
    )


def _erase_edits(cursor: Any, deleted: list[str]) -> None:
    """A deleted message's edits lose their bodies too (PROTOCOL 10: gone, not hidden)."""
    where, params = any_of("target_id", sorted(deleted))
    cursor.execute(
        table_sql(f"UPDATE {{message}} SET body = '' WHERE kind = 'edit' AND {where}"), params
    )


def _mark_read(cursor: Any, positions: dict[tuple[str, int], int]) -> None:
    """Sending implies having read up to there; positions never move backwards."""
    table, params = values_table(
        [("cid", "text"), ("uid", "bigint"), ("seq", "bigint")],
        [(cid, uid, seq) for (cid, uid), seq in sorted(positions.items())],
    )
    cursor.execute(
        table_sql(
            f"UPDATE {{membership}} SET read_seq = v.seq FROM ({table}) AS v "
            "WHERE {membership}.conversation_id = v.cid AND {membership}.user_id = v.uid "
            "AND {membership}.read_seq < v.seq"
        ),
        params,
    )


def _outbox_events(
    rows: list[Message], offline: outbox.Offline | None, subscribed: outbox.Subscribed
) -> list[outbox.Event]:
    """The outbox rows of stored messages, in seq order per conversation. With webhooks
    on (`offline` read): each message (`conversation.event`), then a `notify.offline`
    for each other member with no open chat socket when it was stored (PROTOCOL 13).
    Then, webhooks or not, a push for each subscription of those members (PROTOCOL 14)."""
    events_out: list[outbox.Event] = []
    for m in rows:
        cid = m.conversation_id
        if offline is not None:
            events_out.append(outbox.event(outbox.CONVERSATION_EVENT, cid, message_event(m), m.ts))
        if m.kind != Message.MESSAGE:
            continue  # an edit, delete or reaction notifies nobody away (PROTOCOL 13, 14)
        if offline is not None:
            for uid, user in offline.get(cid, ()):
                if uid != m.sender_id:
                    data = {"user": user, "conversation": cid, "seq": m.seq, "message_id": m.id}
                    events_out.append(outbox.event(outbox.NOTIFY_OFFLINE, cid, data, m.ts))
        events_out.extend(outbox.pushes(m, subscribed))
    return events_out


@contextmanager
def _one_round_trip() -> Iterator[None]:
    """Send the statements inside together and wait once (psycopg's pipeline mode):
    under load every wait for the database is a wait for a CPU too. A failure
    surfaces at the end of the block, as Django's own errors."""
    if not is_postgres():
        yield
        return
    with connection.wrap_database_errors, connection.connection.pipeline():
        yield


def _commit_now(cursor: Any) -> None:
    """On PostgreSQL, COMMIT in the same round trip as the batch's last statements when
    the batch's transaction is the outermost one (Django's commit at the end of the
    block then finds nothing to do): one wait for the database less per batch. If a
    statement before it fails, PostgreSQL skips it and the block rolls back."""
    if is_postgres() and connection.commit_on_exit and len(connection.atomic_blocks) == 1:
        cursor.execute("COMMIT")


class _Claimed(IntegrityError):
    """Another transaction claimed an attachment this batch claims: roll back, and store
    the batch again one event at a time (`store_sends`)."""


def _no_target() -> TetherError:
    return TetherError(
        Code.NOT_FOUND, "message_id: no such message in this conversation", field="message_id"
    )


class _Batch:
    """What a batch's checks read and change: the targets' state as the events before
    in the batch left it, the attachments claimed, the deletes made."""

    def __init__(
        self,
        creators: dict[str, int | None],
        targets: dict[str, _Target],
        deletes: dict[str, Message],
        found: dict[str, attachments.Found],
    ) -> None:
        self.creators = creators
        self.targets = targets
        self.deletes = deletes  # target → its (first) delete event
        self.found = found
        self.claimed: dict[str, str] = {}  # attachment → the new message holding it
        self.changed: dict[str, _Target] = {}
        self.deleted: list[str] = []

    def check(self, r: SendRequest) -> Result | None:
        """The error to answer `r` with, or the earlier delete it repeats; None when
        it is stored. Checks only: `apply` changes the state once it is."""
        cid = r.conversation_id
        if r.kind == Message.MESSAGE:
            if r.reply_to is not None:
                t = self.targets.get(r.reply_to)
                if t is None or t.conversation_id != cid or t.kind != Message.MESSAGE:
                    return bad_request("reply_to", "must be the message_id of a message here")
            for aid in r.attachments:
                f = self.found.get(aid)
                if (
                    f is None
                    or f.conversation_id != cid
                    or r.sender_id is None
                    or f.uploader_id != r.sender_id
                    or f.message_id is not None
                    or aid in self.claimed
                ):
                    return bad_request(
                        "attachments",
                        f"{aid[:MAX_ID_CHARS]} is not an attachment of yours in this "
                        "conversation that no message holds",
                    )
            return None
        t = self.targets.get(r.target or "")
        if t is None or t.conversation_id != cid or t.kind != Message.MESSAGE:
            return _no_target()
        if r.kind == Message.EDIT:
            if r.sender_id is None or r.sender_id != t.sender_id:
                return TetherError(Code.FORBIDDEN, "only its sender may edit a message")
            if t.deleted:
                return bad_request("message_id", "that message was deleted")
        elif r.kind == Message.DELETE:
            allowed = (
                r.staff
                or (r.sender_id is not None and r.sender_id in (t.sender_id, self.creators[cid]))
                or (r.sender is not None and getattr(r.sender, "is_staff", False))
            )
            if not allowed:
                return TetherError(
                    Code.FORBIDDEN,
                    "only its sender, the conversation's creator or staff may delete a message",
                )
            if t.deleted:
                return Sent(self.deletes[t.id], True)
        return None

    def apply(self, r: SendRequest, m: Message) -> None:
        """`r`, stored as `m`: its changes to the batch's state."""
        if r.kind == Message.MESSAGE:
            if r.attachments:
                for aid in r.attachments:
                    self.claimed[aid] = m.id
                m.shown_attachments = attachments.shown_in_order(  # type: ignore[attr-defined]
                    self.found[a] for a in r.attachments
                )
            return
        t = self.targets[m.target_id]
        self.changed[t.id] = t
        if r.kind == Message.EDIT:
            t.body, t.edited_at = r.body, m.ts
        elif r.kind == Message.DELETE:
            t.body, t.deleted = "", True
            self.deletes[t.id] = m
            self.deleted.append(t.id)
        else:
            users = list(t.reactions.get(r.emoji, []))
            if r.on and m.sender_id not in users:
                users.append(m.sender_id)
            elif not r.on and m.sender_id in users:
                users.remove(m.sender_id)
            reactions = dict(t.reactions)  # an emoji kept keeps its place
            if users:
                reactions[r.emoji] = users
            else:
                reactions.pop(r.emoji, None)
            t.reactions = reactions


def _store(requests: list[SendRequest]) -> list[Result]:
    results: list[Result | None] = [None] * len(requests)
    keys = {r.key for r in requests}
    asked = {
        (r.conversation_id, r.sender_id) for r in requests if r.sender is not None and not r.staff
    }
    # Seqs are taken before the look-ups answer, for every send that may be new:
    # one per key and conversation, since a key refused in one conversation (not a
    # member) may then be stored in another by a later send of the batch, as it
    # would be one send at a time. Those not used (duplicates, forbidden: rare) are
    # given back before the commit, under the same row lock, so the seqs stay
    # gap-free. Two round trips whatever the batch: look-ups with locks and seqs,
    # then rows and commit.
    taken: dict[str, int] = defaultdict(int)
    for _sender, _key, cid in {(r.sender_id, r.client_id, r.conversation_id) for r in requests}:
        taken[cid] += 1
    fresh: list[int] = []
    first: dict[Key, int] = {}  # key → index of the send that stores it
    # PROTOCOL 10's events read what they name (targets, replied-to messages, the first
    # delete of a target, attachments) in the first round trip too, after the lock.
    named = {r.target for r in requests if r.target is not None}
    named |= {r.reply_to for r in requests if r.reply_to is not None}
    deleting = {r.target for r in requests if r.kind == Message.DELETE and r.target is not None}
    attached = [a for r in requests for a in r.attachments]
    # The batch's outbox rows join the same two round trips: who is offline (webhooks
    # on) and the subscriptions of who is offline (Web Push) are read with the
    # look-ups, the rows are inserted with the messages.
    hooked = outbox.enabled()
    with (
        transaction.atomic(),
        bound_cursor() as one,
        bound_cursor() as two,
        bound_cursor() as three,
        bound_cursor() as four,
        bound_cursor() as five,
        bound_cursor() if hooked else nullcontext() as six,
        ExitStack() as more,
    ):

        def cursor() -> Any:
            return more.enter_context(bound_cursor())

        with _one_round_trip():
            read_stored = _existing(one, keys)
            read_members = _memberships(two, asked)
            read_seqs = _bump(three, four, taken)
            read_subscribed = outbox.push_targets(five, list(taken))
            read_offline = outbox.offline_members(six, list(taken)) if hooked else None
            read_targets = _targets(cursor(), named) if named else dict
            read_deletes = _first_deletes(cursor(), deleting) if deleting else dict
            read_found = attachments.lookup(cursor(), attached) if attached else dict
        stored, members, (next_seq, creators) = read_stored(), read_members(), read_seqs()
        subscribed = read_subscribed()
        offline = read_offline() if read_offline is not None else None
        batch = _Batch(creators, read_targets(), read_deletes(), read_found())
        rows: list[Message] = []
        ts = now_ms()
        for i, r in enumerate(requests):
            key = r.key
            if key in stored:
                results[i] = Sent(stored[key], True)
                continue
            elif key in first:
                continue  # the same key twice in one batch: answered after the insert
            elif r.conversation_id not in next_seq and (r.sender is None or r.staff):
                results[i] = no_conversation()
                continue
            elif (
                r.sender is not None
                and not r.staff
                and (r.conversation_id, r.sender_id) not in members
            ):
                results[i] = forbidden()
                continue
            refused = batch.check(r)
            if refused is not None:
                results[i] = refused
                continue
            first[key] = i
            fresh.append(i)
            seq = next_seq[r.conversation_id]
            next_seq[r.conversation_id] = seq + 1
            m = Message(
                id=messages.new_message_id(),
                conversation_id=r.conversation_id,
                seq=seq,
                sender=r.sender,
                client_id=r.client_id,
                body=r.body,
                ts=ts,
                kind=r.kind,
                target_id=r.target,
                reply_to_id=r.reply_to,
                emoji=r.emoji,
                reaction_on=r.on,
            )
            batch.apply(r, m)
            rows.append(m)
            results[i] = Sent(m, False)
        used: dict[str, int] = defaultdict(int)
        for i in fresh:
            used[requests[i].conversation_id] += 1
        unused = {
            cid: n - used[cid] for cid, n in taken.items() if cid in next_seq and n > used[cid]
        }
        read: dict[tuple[str, int], int] = {}
        for m in rows:
            if m.sender_id is not None and (m.conversation_id, m.sender_id) in members:
                read[(m.conversation_id, m.sender_id)] = m.seq
        plain = all(requests[i].plain for i in fresh)
        claims = sorted(batch.claimed.items())
        with _one_round_trip():
            _give_back(three, unused)
            if rows:
                _insert(one, rows, plain)
            read_claimed = attachments.claim(four, claims)
            if batch.changed:
                _update_targets(cursor(), [*batch.changed.values()])
            if batch.deleted:
                _erase_edits(cursor(), batch.deleted)
            read_purged = attachments.purge(cursor(), batch.deleted) if batch.deleted else list
            if read:
                _mark_read(two, read)
            if rows and (hooked or subscribed):
                outbox.insert(five, _outbox_events(rows, offline, subscribed))
            if not claims:
                _commit_now(one)
        if read_claimed() != len(claims):
            raise _Claimed("an attachment was claimed by another message meanwhile")
        purged = read_purged()
        if purged:  # the files go once the rows' deletion is committed
            transaction.on_commit(lambda: attachments.delete_files(purged), robust=True)
    for i, r in enumerate(requests):
        if results[i] is None:
            earlier = results[first[r.key]]
            results[i] = Sent(earlier.message, True) if isinstance(earlier, Sent) else earlier
    metrics.MESSAGES_STORED.inc(len(fresh))
    return results  # type: ignore[return-value]


def _one(request: SendRequest) -> Result:
    """One send alone: a batch of one, and the duplicate it is if another connection or
    node stored its key between the look-up and the insert (or, when another claimed
    one of its attachments meanwhile, the refusal it now is)."""
    try:
        return _store([request])[0]
    except _Claimed:
        return _store([request])[0]
    except IntegrityError:
        existing = messages.stored(*request.key)
        if existing is None:
            raise
        return Sent(existing, True)


def store_sends(requests: list[SendRequest]) -> list[Result]:
    """Store validated sends together; per send, its `Sent` or the error to answer.

    A key that another node stores between this batch's look-up and its insert
    fails the whole transaction: the batch is then stored one send at a time,
    which answers that send as the duplicate it is.
    """
    try:
        return _store(requests)
    except IntegrityError:
        return [_one(r) for r in requests]


def _where(conversation_id: Any) -> str:
    if not valid_conversation_id(conversation_id):
        raise bad_request("conversation", "must be a conversation id (a string)")
    return conversation_id


def _message_id(value: Any, name: str = "message_id") -> str:
    if not valid_id(value) or "\x00" in value:
        raise bad_request(name, "must be a message_id (a string)")
    return value


def request(
    sender: Any,
    conversation_id: Any,
    client_id: Any,
    body: Any,
    reply_to: Any = None,
    attachment_ids: Any = None,
) -> SendRequest:
    """A `SendRequest` from a frame's fields, or the protocol error to answer. A message
    with attachments may have an empty body (PROTOCOL 10)."""
    if attachment_ids is not None and not attachments.valid_ids(attachment_ids):
        raise bad_request(
            "attachments", f"must be a list of at most {attachments.MAX_PER_MESSAGE} attachment ids"
        )
    messages.validate_send(client_id, body, may_be_empty=bool(attachment_ids))
    cid = _where(conversation_id)
    if reply_to is not None:
        _message_id(reply_to, "reply_to")
    return SendRequest(
        sender,
        cid,
        client_id,
        body,
        reply_to=reply_to,
        attachments=tuple(attachment_ids or ()),
    )


def edit_request(
    sender: Any, conversation_id: Any, client_id: Any, message_id: Any, body: Any
) -> SendRequest:
    """An `edit` (PROTOCOL 10): `body` as in `send`."""
    messages.validate_send(client_id, body, key_of="edit")
    cid = _where(conversation_id)
    target = _message_id(message_id)
    return SendRequest(sender, cid, client_id, body, kind=Message.EDIT, target=target)


def delete_request(
    sender: Any, conversation_id: Any, client_id: Any, message_id: Any, staff: bool = False
) -> SendRequest:
    """A `delete` (PROTOCOL 10); `staff`: an operator acting from the Django admin."""
    messages.validate_key(client_id, "delete")
    cid = _where(conversation_id)
    target = _message_id(message_id)
    return SendRequest(sender, cid, client_id, "", kind=Message.DELETE, target=target, staff=staff)


MAX_EMOJI_CHARS = 16


def react_request(
    sender: Any, conversation_id: Any, client_id: Any, message_id: Any, emoji: Any, on: Any
) -> SendRequest:
    """A `react` (PROTOCOL 10): `emoji` 1 to 16 characters, `on` a boolean."""
    messages.validate_key(client_id, "react")
    cid = _where(conversation_id)
    target = _message_id(message_id)
    if (
        not isinstance(emoji, str)
        or not 1 <= len(emoji) <= MAX_EMOJI_CHARS
        or "\x00" in emoji
        or not emoji.strip()
    ):
        raise bad_request("emoji", f"must be a string of 1 to {MAX_EMOJI_CHARS} characters")
    if not isinstance(on, bool):
        raise bad_request("on", "must be true or false")
    return SendRequest(
        sender, cid, client_id, "", kind=Message.REACTION, target=target, emoji=emoji, on=on
    )


def store(request: SendRequest) -> Sent:
    """One event from sync code (REST, the admin, commands): checked and stored as a
    socket's is, and out through chat/events.py once committed; TetherError when
    refused."""
    result = _one(request)
    if isinstance(result, TetherError):
        raise result
    if not result.duplicate:
        events.message_stored(result.message, messages.encoded_frame(result.message))
    return result


def send(
    sender: Any | None,
    conversation_id: Any,
    client_id: Any,
    body: Any,
    reply_to: Any = None,
    attachment_ids: Any = None,
) -> Sent:
    """One send from sync code (REST, commands). `sender` None stores a system message
    (PROTOCOL 12: the backend's, in any conversation)."""
    return store(request(sender, conversation_id, client_id, body, reply_to, attachment_ids))
