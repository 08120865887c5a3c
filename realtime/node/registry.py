"""Live connection and node records: the only code that writes them.

Every exit path of a socket ends in `remove_connection` (docs/architecture.md, rule 5);
the reaper on every node removes what a crashed node left behind.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from realtime.models import LiveConnection, Node
from realtime.node.batching import Batcher
from realtime.node.db import any_of, bound_cursor, in_pool, values_table

log = logging.getLogger("tether.registry")


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the registry stores about a socket at accept time."""

    id: str
    node: str
    user_id: int
    endpoint: str
    channel_name: str
    remote_addr: str
    user_agent: str
    auth_method: str
    auth_ref: str


# The node's own records go through the pool threads, not the async ORM: its one
# shared thread would hold a pooled connection between calls
# (docs/deployment.md, "Connection budget").
@in_pool
def register_node(name: str) -> tuple[Node, list[int]]:
    """Create or refresh this process's Node; drop records a previous run left.

    Returns the node and the users whose stale records were dropped (their
    presence must be re-evaluated).
    """
    now = timezone.now()
    node, created = Node.objects.update_or_create(
        name=name,
        defaults={
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": now,
            "last_heartbeat": now,
            "connection_count": 0,
        },
    )
    user_ids: list[int] = []
    if not created:
        # Same NODE_NAME as a process that died: its sockets are gone with it.
        stale = LiveConnection.objects.filter(node=node)
        user_ids = sorted(set(stale.values_list("user_id", flat=True)))
        removed, _ = stale.delete()
        if removed:
            log.warning("node %s restarted: removed %d stale connection records", name, removed)
    return node, user_ids


@in_pool
def unregister_node(name: str) -> None:
    """Remove this node and its connection records (clean shutdown). On a pool thread:
    at SIGTERM the async ORM's single thread may still be busy with a socket's
    setup, and asgiref then refuses the call ("would deadlock")."""
    Node.objects.filter(name=name).delete()


Admission = tuple[ConnectionInfo, int, int]  # the socket, its node's id, the per-user limit


def admit_connections(admissions: list[Admission]) -> list[bool]:
    """Record sockets accepted together, each unless its user already has its
    `per_user_limit` sockets across the cluster: one count of their users'
    sockets, then one insert of those within their limits, in arrival order. Raw
    SQL with bound parameters on a pooled thread: this runs for every handshake.
    (As with one statement per socket, two nodes admitting one user's sockets at
    the same instant may both see room for the last one: the limit is a guard
    against runaway clients, not an exact quota.)"""
    live = connection.ops.quote_name(LiveConnection._meta.db_table)
    user_ids = sorted({info.user_id for info, _, _ in admissions})
    with bound_cursor() as cursor:
        where, params = any_of("user_id", user_ids)
        cursor.execute(
            f"SELECT user_id, count(*) FROM {live} WHERE {where} GROUP BY user_id", params
        )
        counts = dict(cursor.fetchall())
        admitted = []
        for info, _, limit in admissions:
            room = counts.get(info.user_id, 0) < limit
            if room:
                counts[info.user_id] = counts.get(info.user_id, 0) + 1
            admitted.append(room)
        rows = [
            (
                info.id,
                node_id,
                info.user_id,
                info.endpoint,
                info.channel_name,
                info.remote_addr[:64],
                info.user_agent[:300],
                info.auth_method,
                info.auth_ref,
            )
            for (info, node_id, _), ok in zip(admissions, admitted, strict=True)
            if ok
        ]
        if rows:
            names = list(_RECORD_COLUMNS)
            values, params = values_table(list(_RECORD_COLUMNS.items()), rows)
            now = connection.ops.adapt_datetimefield_value(timezone.now())
            cursor.execute(
                f"INSERT INTO {live} ({', '.join(names)}, connected_at, last_seen, subscriptions) "
                f"SELECT {', '.join(names)}, %s, %s, '[]' FROM ({values}) AS r",
                [now, now, *params],
            )
    return admitted


# The columns of a socket's record written at admission, with their PostgreSQL types.
_RECORD_COLUMNS = {
    "id": "text",
    "node_id": "bigint",
    "user_id": "bigint",
    "endpoint": "text",
    "channel_name": "text",
    "remote_addr": "text",
    "user_agent": "text",
    "auth_method": "text",
    "auth_ref": "text",
}


async def add_connection(info: ConnectionInfo, node_id: int) -> None:
    """Record a socket again (a node re-registering after it was reaped)."""
    await admit(info, node_id, 2**31)


# Handshakes that arrive together are recorded together: one thread hop and two
# statements per batch instead of per socket (docs/benchmarks.md, accepts per second).
_admissions: Batcher[Admission, bool] = Batcher(in_pool(admit_connections))


async def admit(info: ConnectionInfo, node_id: int, per_user_limit: int) -> bool:
    """Record a socket unless its user is at the limit (see `admit_connections`)."""
    return await _admissions.submit((info, node_id, per_user_limit))


@in_pool
def remove_connection(connection_id: str) -> bool:
    """Delete one socket's record; True if it existed (pool thread: see unregister_node).
    Raw SQL, as `admit_connections`: the ORM's delete cost three times the statement,
    on every disconnect (a reconnect storm is thousands of them)."""
    table = connection.ops.quote_name(LiveConnection._meta.db_table)
    with bound_cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [connection_id])
        return cursor.rowcount > 0


@in_pool
def set_subscriptions(connection_id: str, topics: list[str]) -> None:
    """Record the topics a socket receives (admin views, stats)."""
    LiveConnection.objects.filter(id=connection_id).update(subscriptions=topics)


@in_pool
def node_heartbeat(
    node_id: int, seen_ids: list[str], connection_count: int, stats: dict | None = None
) -> int:
    """Refresh the node's heartbeat (and figures) and, in one batch, `last_seen` of
    active sockets."""
    now = timezone.now()
    fields: dict = {"last_heartbeat": now, "connection_count": connection_count}
    if stats is not None:
        fields["stats"] = stats
    updated = Node.objects.filter(id=node_id).update(**fields)
    if seen_ids:
        LiveConnection.objects.filter(id__in=seen_ids).update(last_seen=now)
    return updated


# A node is never called silent sooner than this, however fast it beats: a busy host
# may be a second or two late with a pass without having stopped.
SILENT_MIN_SECONDS = 15.0
# The reaper's pass itself and the announcements that follow it (see `reap_after`).
REAP_MARGIN_SECONDS = 2.0


def silent_after() -> timedelta:
    """The one liveness rule: a node unheard for longer missed three heartbeats (at least
    15 s) and is silent. The admin, `/api/stats/` and `/ops/` (which gets it with each
    node's figures) all ask here; the reapers remove it later, at `reap_after()`."""
    return timedelta(seconds=max(3 * settings.TETHER_MAINTENANCE_SECONDS, SILENT_MIN_SECONDS))


def is_alive(last_heartbeat: datetime, now: datetime | None = None) -> bool:
    """Whether a node whose last heartbeat is `last_heartbeat` counts as alive."""
    return (now or timezone.now()) - last_heartbeat <= silent_after()


def reap_after() -> timedelta:
    """How long a node may be silent before a reaper removes it and its records.

    A crashed node's last heartbeat is at most as old as the crash and a reaper
    passes once a maintenance period: reaping after `PING_TIMEOUT` + 10 s less one
    period and a margin for the pass and the announcements puts its users offline
    within `PING_TIMEOUT` + 10 s of the crash (PROTOCOL 6; without the margin an
    audit measured up to 18.4 s of the 20 allowed)."""
    period = settings.TETHER_MAINTENANCE_SECONDS
    return timedelta(
        seconds=max(period * 2, settings.PING_TIMEOUT + 10 - period - REAP_MARGIN_SECONDS)
    )


@dataclass(frozen=True)
class ReapResult:
    """What one reaper pass removed."""

    nodes: list[str]
    connections: int
    user_ids: list[int]


def reap_silent_nodes(silent_for: timedelta, now: datetime | None = None) -> ReapResult:
    """Remove nodes silent longer than `silent_for` and their sockets' records."""
    cutoff = (now or timezone.now()) - silent_for
    with transaction.atomic():
        dead = list(Node.objects.filter(last_heartbeat__lt=cutoff).values_list("id", "name"))
        if not dead:
            return ReapResult([], 0, [])
        ids = [node_id for node_id, _ in dead]
        conns = LiveConnection.objects.filter(node_id__in=ids)
        user_ids = sorted(set(conns.values_list("user_id", flat=True)))
        removed, _ = conns.delete()
        Node.objects.filter(id__in=ids, last_heartbeat__lt=cutoff).delete()
    names = [name for _, name in dead]
    log.warning("reaper removed silent nodes %s and %d connection records", names, removed)
    return ReapResult(names, removed, user_ids)
