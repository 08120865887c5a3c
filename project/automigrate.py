"""Apply pending migrations when a node starts, so a fresh database just works.

Several nodes may start at once on one PostgreSQL: a session advisory lock lets
one migrate while the others wait and then find nothing left to do.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

log = logging.getLogger("tether.migrate")

# Arbitrary constant naming Tether's migration lock (pg_advisory_lock takes a bigint).
LOCK_KEY = 0x7E7E_7001


def _pending() -> int:
    executor = MigrationExecutor(connection)
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))


def migrate_if_needed() -> None:
    """Run `migrate` when migrations are pending; log, never raise, when the database is down."""
    if not settings.AUTO_MIGRATE:
        return
    try:
        if not _pending():
            return
        is_postgres = connection.vendor == "postgresql"
        if is_postgres:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        try:
            pending = _pending()  # another node may have done it meanwhile
            if pending:
                log.info("applying %d pending migrations", pending)
                call_command("migrate", interactive=False, verbosity=0)
        finally:
            if is_postgres:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    except Exception as exc:  # the database may be down: /ready/ will say so
        log.error("could not check or apply migrations: %s", exc)
    finally:
        connection.close()
