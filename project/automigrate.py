"""Apply pending migrations when a node starts, so a fresh database just works.

Several nodes may start at once on one PostgreSQL: an advisory lock lets one
migrate while the others wait and then find nothing left to do. The lock is
transaction-scoped, taken in an open transaction of a connection of its own:
behind a transaction pooler (PgBouncer, DB_TRANSACTION_POOLING) a session lock
would stay on whichever server session ran its statement, and the unlock could
reach another; a transaction keeps its server session until it ends, and the
lock ends with it, also if the node dies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

log = logging.getLogger("tether.migrate")

# Arbitrary constant naming Tether's migration lock (pg_advisory_xact_lock takes a bigint).
LOCK_KEY = 0x7E7E_7001


def _pending() -> int:
    executor = MigrationExecutor(connection)
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))


@contextmanager
def _migration_lock() -> Iterator[None]:
    """Hold Tether's migration lock for the block (PostgreSQL; nothing to hold elsewhere)."""
    if connection.vendor != "postgresql":
        yield
        return
    params = connection.get_connection_params()
    with psycopg.connect(**params) as holder, holder.transaction():
        holder.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        yield


def migrate_if_needed() -> None:
    """Run `migrate` when migrations are pending; log, never raise, when the database is down."""
    if not settings.AUTO_MIGRATE:
        return
    try:
        if not _pending():
            return
        with _migration_lock():
            pending = _pending()  # another node may have done it meanwhile
            if pending:
                log.info("applying %d pending migrations", pending)
                call_command("migrate", interactive=False, verbosity=0)
    except Exception as exc:  # the database may be down: /ready/ will say so
        log.error("could not check or apply migrations: %s", exc)
    finally:
        connection.close()
