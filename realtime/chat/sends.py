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

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import IntegrityError, connection, transaction

from monitoring import metrics
from realtime.chat import events, messages
from realtime.chat.conversations import forbidden, no_conversation, valid_conversation_id
from realtime.chat.messages import Sent, table_sql
from realtime.chat.representations import message_event
from realtime.hooks import outbox
from realtime.models import Message
from realtime.node.db import bound_cursor, is_postgres, values_table
from realtime.protocol import TetherError, bad_request, now_ms

Result = Sent | TetherError
T = TypeVar("T")
Reader = Callable[[], T]  # a statement's result, read once its round trip is over


# A send's idempotency key: (sender id, key, None) for a member's, (None, key,
# conversation) for a system message's, whose key space is its conversation.
Key = tuple[int | None, str, str | None]


@dataclass(frozen=True)
class SendRequest:
    """One validated `send`: who (None: a system message, PROTOCOL 12), where, the
    idempotency key and the body."""

    sender: Any | None
    conversation_id: str
    client_id: str
    body: str

    @property
    def sender_id(self) -> int | None:
        return None if self.sender is None else self.sender.pk

    @property
    def key(self) -> Key:
        if self.sender is None:
            return (None, self.client_id, self.conversation_id)
        return (self.sender.pk, self.client_id, None)


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


def _bump(locks: Any, cursor: Any, counts: dict[str, int]) -> Reader[dict[str, int]]:
    """Add each conversation's count to `last_seq`; the first new seq of each."""
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
            "WHERE {conversation}.id = v.cid RETURNING {conversation}.id, last_seq"
        ),
        params,
    )
    return lambda: {cid: last - counts[cid] + 1 for cid, last in cursor.fetchall()}


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


def _insert(cursor: Any, rows: list[Message]) -> None:
    table, params = values_table(
        [
            ("id", "text"),
            ("conversation_id", "text"),
            ("seq", "bigint"),
            ("sender_id", "bigint"),
            ("client_id", "text"),
            ("body", "text"),
            ("ts", "bigint"),
        ],
        [(m.id, m.conversation_id, m.seq, m.sender_id, m.client_id, m.body, m.ts) for m in rows],
    )
    cursor.execute(
        table_sql(
            "INSERT INTO {message} (id, conversation_id, seq, sender_id, client_id, body, ts) "
            f"SELECT id, conversation_id, seq, sender_id, client_id, body, ts FROM ({table}) AS v"
        ),
        params,
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


def _store(requests: list[SendRequest]) -> list[Result]:
    results: list[Result | None] = [None] * len(requests)
    keys = {r.key for r in requests}
    asked = {(r.conversation_id, r.sender_id) for r in requests if r.sender is not None}
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
    ):
        with _one_round_trip():
            read_stored = _existing(one, keys)
            read_members = _memberships(two, asked)
            read_seqs = _bump(three, four, taken)
            read_subscribed = outbox.push_targets(five, list(taken))
            read_offline = outbox.offline_members(six, list(taken)) if hooked else None
        stored, members, next_seq = read_stored(), read_members(), read_seqs()
        subscribed = read_subscribed()
        offline = read_offline() if read_offline is not None else None
        for i, r in enumerate(requests):
            key = r.key
            if key in stored:
                results[i] = Sent(stored[key], True)
            elif key in first:
                continue  # the same key twice in one batch: answered after the insert
            elif r.sender is None and r.conversation_id not in next_seq:
                results[i] = no_conversation()
            elif r.sender is not None and (r.conversation_id, r.sender_id) not in members:
                results[i] = forbidden()
            else:
                first[key] = i
                fresh.append(i)
        used: dict[str, int] = defaultdict(int)
        for i in fresh:
            used[requests[i].conversation_id] += 1
        unused = {
            cid: n - used[cid] for cid, n in taken.items() if cid in next_seq and n > used[cid]
        }
        rows: list[Message] = []
        ts = now_ms()
        for i in fresh:
            r = requests[i]
            seq = next_seq[r.conversation_id]
            next_seq[r.conversation_id] = seq + 1
            rows.append(
                Message(
                    id=messages.new_message_id(),
                    conversation_id=r.conversation_id,
                    seq=seq,
                    sender=r.sender,
                    client_id=r.client_id,
                    body=r.body,
                    ts=ts,
                )
            )
            results[i] = Sent(rows[-1], False)
        read: dict[tuple[str, int], int] = {}
        for m in rows:
            if m.sender_id is not None:
                read[(m.conversation_id, m.sender_id)] = m.seq
        with _one_round_trip():
            _give_back(three, unused)
            if rows:
                _insert(one, rows)
            if read:
                _mark_read(two, read)
            if rows and (hooked or subscribed):
                outbox.insert(five, _outbox_events(rows, offline, subscribed))
            _commit_now(one)
    for i, r in enumerate(requests):
        if results[i] is None:
            earlier = results[first[r.key]]
            results[i] = Sent(earlier.message, True) if isinstance(earlier, Sent) else earlier
    metrics.MESSAGES_STORED.inc(len(fresh))
    return results  # type: ignore[return-value]


def _one(request: SendRequest) -> Result:
    """One send alone: a batch of one, and the duplicate it is if another connection or
    node stored its key between the look-up and the insert."""
    try:
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


def request(sender: Any, conversation_id: Any, client_id: Any, body: Any) -> SendRequest:
    """A `SendRequest` from a frame's fields, or the protocol error to answer."""
    messages.validate_send(client_id, body)
    if not valid_conversation_id(conversation_id):
        raise bad_request("conversation", "must be a conversation id (a string)")
    return SendRequest(sender, conversation_id, client_id, body)


def send(sender: Any | None, conversation_id: Any, client_id: Any, body: Any) -> Sent:
    """One send from sync code (REST, commands): checked and stored as a socket send
    is, and out through chat/events.py once committed; TetherError when refused.
    `sender` None stores a system message (PROTOCOL 12: the backend's, in any
    conversation)."""
    result = _one(request(sender, conversation_id, client_id, body))
    if isinstance(result, TetherError):
        raise result
    if not result.duplicate:
        events.message_stored(result.message, messages.encoded_frame(result.message))
    return result
