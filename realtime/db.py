"""Run ORM work off the event loop in a pool of worker threads.

channels' `database_sync_to_async` funnels every call of a process through one
shared thread; the hot paths (send, gap fill) use a small pool instead, each
thread with its own persistent connection (CONN_MAX_AGE), so one slow query
does not queue every other socket behind it (ARCHITECTURE rule 7).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from django.db import close_old_connections, connections

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
        if conn.connection is not None and (conn.errors_occurred or not conn.get_autocommit()):
            conn.close_if_unusable_or_obsolete()  # broken by the error: closed now
            _thread.checked_at = -HEALTH_CHECK_SECONDS


def in_list(count: int) -> str:
    """`(%s, %s, …)` with `count` placeholders: an SQL `IN` list for raw statements
    that take a batch of values (handshakes arrive together)."""
    return "(" + ", ".join(["%s"] * count) + ")"


def in_pool(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`fn` as a coroutine function running in the loop's thread pool.

    Straight `run_in_executor` (in a copy of the caller's context, as asgiref
    does): asgiref's `sync_to_async` wraps each call in machinery these calls do
    not use (thread-sensitive routing, nested `async_to_sync` support), and a
    handshake makes two of them (issue 5, accepts per second)."""

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
