"""The outbox as a queue that any node works (docs/architecture.md, "The outbox").

A node claims due events in a short transaction and leases them (`next_attempt_at`
moves to the end of the lease, `attempts` counts the claim), then sends them with
no transaction open. A node killed meanwhile loses nothing: its lease runs out
and another node claims the events again (at least once; receivers deduplicate
by id). Only the oldest pending event of each order key (a conversation, or a
user's presence) is ever claimed, so a conversation's next event waits until
the one before it is delivered or given up (PROTOCOL 13).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from realtime.models import OutboxEvent
from realtime.node.db import is_postgres

# Retry delays: doubling from RETRY_BASE up to RETRY_CAP, each drawn from its upper
# half so that events that failed together do not all come back together.
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 300.0
# A claim's lease beyond the request's own timeout: the result's write-back.
LEASE_MARGIN_SECONDS = 5.0
# Delivered (and dropped) events stay this long (the admin shows recent answers),
# failed ones a week.
KEEP_DELIVERED = timedelta(hours=1)
KEEP_FAILED = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Claimed:
    """An event this node holds a lease on: `attempts` includes this attempt."""

    id: int
    event_id: str
    type: str
    data: str
    ts: int
    attempts: int
    queued_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended: `status` the HTTP answer (None: no answer), `error` why not 2xx."""

    id: int
    attempts: int
    delivered: bool
    status: int | None
    error: str
    # For an attempt that failed: when to try again, or None to give up.
    retry_at: datetime | None
    # Finished undelivered because its target is gone (a push subscription removed).
    dropped: bool = False


def _table() -> str:
    return connection.ops.quote_name(OutboxEvent._meta.db_table)


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones."""
    ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** min(attempts - 1, 30))
    return random.uniform(ceiling / 2, ceiling)


def next_attempt(
    claimed: Claimed, max_age: float, now: datetime | None = None, at_least: float = 0.0
) -> datetime | None:
    """When to retry a failed attempt (no sooner than `at_least` seconds: a receiver's
    `Retry-After`), or None once the event would be older than `max_age`."""
    now = now or timezone.now()
    at = now + timedelta(seconds=max(retry_delay(claimed.attempts), at_least))
    return None if at - claimed.queued_at > timedelta(seconds=max_age) else at


# The oldest pending event of each order key, found key by key through the
# partial index on (order_key, id): a claim costs a few index probes per key that
# has events waiting, not a look at every pending event (a receiver down for an
# hour leaves tens of thousands behind a few hundred heads).
_HEADS = (
    "keys(k) AS (SELECT min(order_key) FROM {t} WHERE state = 'pending' "
    "UNION ALL SELECT (SELECT min(order_key) FROM {t} WHERE state = 'pending' "
    "AND order_key > k) FROM keys WHERE k IS NOT NULL), "
    "heads(id) AS (SELECT (SELECT min(id) FROM {t} WHERE state = 'pending' AND order_key = k) "
    "FROM keys WHERE k IS NOT NULL)"
)


def claim(limit: int, lease_seconds: float, only_type: str = "") -> list[Claimed]:
    """Lease up to `limit` due events, each the oldest pending one of its order key, in
    write order (only those of `only_type` when given: pushes while no webhook URL is
    set). PostgreSQL skips rows another node is claiming at this moment (`SKIP
    LOCKED`); SQLite serves one process, whose claims take turns."""
    if limit <= 0:
        return []
    table = _table()
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    lock = " FOR UPDATE SKIP LOCKED" if is_postgres() else ""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"WITH RECURSIVE {_HEADS.format(t=table)} UPDATE {table} SET attempts = attempts + 1, "
            f"next_attempt_at = %s WHERE id IN (SELECT o.id FROM {table} o WHERE o.id IN "
            "(SELECT id FROM heads) AND o.state = 'pending' AND o.next_attempt_at <= %s "
            f"{'AND o.type = %s ' if only_type else ''}ORDER BY o.id LIMIT %s{lock}) "
            "RETURNING id, event_id, type, data, ts, attempts, queued_at",
            [
                adapt(now + timedelta(seconds=lease_seconds)),
                adapt(now),
                *([only_type] if only_type else []),
                limit,
            ],
        )
        rows = cursor.fetchall()
    return sorted(
        (Claimed(i, e, t, d, ts, a, _as_datetime(q)) for i, e, t, d, ts, a, q in rows),
        key=lambda c: c.id,
    )


def _as_datetime(value: datetime | str) -> datetime:
    """Raw SQL hands SQLite's datetimes back naive or as text (UTC, as Django writes them)."""
    parsed = value if isinstance(value, datetime) else parse_datetime(value)
    assert parsed is not None, value
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def finish(outcomes: list[Outcome]) -> None:
    """Write attempts' results back, in one transaction. A result is dropped when the
    event moved on meanwhile (delivered by another node, or claimed again after this
    node's lease ran out): that node writes its own."""
    if not outcomes:
        return
    table = _table()
    adapt = connection.ops.adapt_datetimefield_value
    now = adapt(timezone.now())
    delivered = [(o.status, now, o.id) for o in outcomes if o.delivered]
    retried = [
        (adapt(o.retry_at), o.status, o.error[:300], o.id, o.attempts)
        for o in outcomes
        if not o.delivered and o.retry_at is not None
    ]
    failed = [
        (
            OutboxEvent.DROPPED if o.dropped else OutboxEvent.FAILED,
            o.status,
            o.error[:300],
            now,
            o.id,
            o.attempts,
        )
        for o in outcomes
        if not o.delivered and o.retry_at is None
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        if delivered:
            cursor.executemany(
                f"UPDATE {table} SET state = 'delivered', last_status = %s, last_error = '', "
                "finished_at = %s WHERE id = %s AND state = 'pending'",
                delivered,
            )
        if retried:
            cursor.executemany(
                f"UPDATE {table} SET next_attempt_at = %s, last_status = %s, last_error = %s "
                "WHERE id = %s AND attempts = %s AND state = 'pending'",
                retried,
            )
        if failed:
            cursor.executemany(
                f"UPDATE {table} SET state = %s, last_status = %s, last_error = %s, "
                "finished_at = %s WHERE id = %s AND attempts = %s AND state = 'pending'",
                failed,
            )


def retry(ids: list[int]) -> int:
    """Put events back in the queue now, as if just written (the admin's *retry*)."""
    now = timezone.now()
    return (
        OutboxEvent.objects.filter(id__in=ids)
        .exclude(state=OutboxEvent.PENDING)
        .update(
            state=OutboxEvent.PENDING,
            attempts=0,
            next_attempt_at=now,
            queued_at=now,
            finished_at=None,
        )
    )


@dataclass(frozen=True)
class Backlog:
    pending: int
    failed: int
    oldest_pending_seconds: float


def backlog(exclude_type: str = "") -> Backlog:
    """What waits: the pending count, the failed count and the oldest pending event's age
    (events of `exclude_type` left out: the webhook gauges do not count pushes, whose
    push services fail on their own)."""
    rows = OutboxEvent.objects.exclude(type=exclude_type) if exclude_type else OutboxEvent.objects
    pending = rows.filter(state=OutboxEvent.PENDING)
    oldest = pending.order_by("id").values_list("queued_at", flat=True).first()
    age = 0.0 if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())
    return Backlog(pending.count(), rows.filter(state=OutboxEvent.FAILED).count(), age)


def prune() -> int:
    """Remove delivered and dropped events after an hour, failed ones after a week."""
    now = timezone.now()
    removed, _ = OutboxEvent.objects.filter(
        state__in=[OutboxEvent.DELIVERED, OutboxEvent.DROPPED],
        finished_at__lt=now - KEEP_DELIVERED,
    ).delete()
    gone, _ = OutboxEvent.objects.filter(
        state=OutboxEvent.FAILED, finished_at__lt=now - KEEP_FAILED
    ).delete()
    return removed + gone
