"""Run ORM work off the event loop in a pool of worker threads.

channels' `database_sync_to_async` funnels every call of a process through one
shared thread; the hot paths (send, gap fill) use a small pool of threads
instead, so one slow query does not queue every other socket behind it
(docs/architecture.md, rule 7). On PostgreSQL each call takes a connection from the
node's connection pool and hands it back when it returns, so an idle thread
holds none (docs/deployment.md, "Connection budget"); on SQLite a thread keeps
its connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import psycopg
from django.db import close_old_connections, connection, connections

P = ParamSpec("P")
R = TypeVar("R")

# Django checks a reused connection (a `SELECT 1`) at the start of every
# "request"; a pool call is far shorter than a request (one handshake, one
# batch of sends), and the check cost as much as the work. Each thread checks
# at most this often, and at once after an error.
HEALTH_CHECK_SECONDS = 1.0
_thread = threading.local()


def _before_call() -> None:
    now = time.monotonic()
    if now - getattr(_thread, "checked_at", -HEALTH_CHECK_SECONDS) >= HEALTH_CHECK_SECONDS:
        close_old_connections()  # drops expired connections, re-arms the health check
        _thread.checked_at = now


def _after_call() -> None:
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if getattr(conn, "pool", None) is not None:
            # Back to the pool (CONN_MAX_AGE is 0 with a pool), unless broken.
            conn.close_if_unusable_or_obsolete()
        elif conn.errors_occurred or not conn.get_autocommit():
            conn.close_if_unusable_or_obsolete()  # broken by the error: closed now
            _thread.checked_at = -HEALTH_CHECK_SECONDS


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def server_max_connections() -> int | None:
    """PostgreSQL's `max_connections` (None elsewhere): the bound of the connection
    alert (deploy/prometheus-alerts.yml)."""
    if not is_postgres():
        return None
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        return int(cursor.fetchone()[0])


def any_of(column: str, values: list[Any]) -> tuple[str, list[Any]]:
    """`column` is one of `values`, as (SQL, parameters) for a `bound_cursor`, for raw
    statements that take a batch (handshakes arrive together). PostgreSQL gets one
    array, so the text is the same for every batch and the driver prepares it once;
    elsewhere (SQLite) an `IN` list with one placeholder per value."""
    if is_postgres():
        return f"{column} = ANY(%b)", [list(values)]
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)


def values_table(
    columns: list[tuple[str, str]], rows: list[tuple[Any, ...]]
) -> tuple[str, list[Any]]:
    """Literal rows as a derived table with named columns: (SQL, parameters) for a
    `bound_cursor`.

    PostgreSQL gets one array per column through `unnest`, so the statement's
    text is the same whatever the batch size (the driver caches its parsing;
    hundreds of placeholders would be parsed again for every batch). Elsewhere
    (SQLite) a `SELECT … UNION ALL SELECT …` with one placeholder per value.
    Arrays travel in binary (`%b`): psycopg writes their text form element by
    element in Python, with a regular expression each, four times slower.
    """
    names = [name for name, _ in columns]
    if is_postgres():
        arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
        return f"SELECT * FROM unnest({arrays}) AS t({', '.join(names)})", [
            list(column) for column in zip(*rows, strict=True)
        ]
    first = "SELECT " + ", ".join(f"%s AS {name}" for name in names)
    rest = " UNION ALL SELECT " + ", ".join(["%s"] * len(names))
    return first + rest * (len(rows) - 1), [value for row in rows for value in row]


@contextmanager
def bound_cursor() -> Iterator[Any]:
    """A cursor for raw statements on hot paths. On PostgreSQL a psycopg cursor with
    server-side binding, under Django's error wrapping: Django's own cursor quotes
    every parameter into the statement's text in Python (every element of every
    array), and PostgreSQL then parses and plans that text anew each time; bound
    parameters travel separately and constant statements are prepared once."""
    if not is_postgres():
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def in_pool(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`fn` as a coroutine function running in the loop's thread pool.

    Straight `run_in_executor` (in a copy of the caller's context, as asgiref
    does): asgiref's `sync_to_async` wraps each call in machinery these calls do
    not use (thread-sensitive routing, nested `async_to_sync` support), and a
    handshake makes two of them (docs/benchmarks.md, accepts per second)."""

    def run(*args: Any, **kwargs: Any) -> R:
        _before_call()
        try:
            return fn(*args, **kwargs)
        finally:
            _after_call()

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        context = contextvars.copy_context()
        job = functools.partial(context.run, run, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, job)

    return call
