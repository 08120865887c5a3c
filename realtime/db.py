"""Run ORM work off the event loop in a pool of worker threads.

channels' `database_sync_to_async` funnels every call of a process through one
shared thread; the hot paths (send, gap fill) use a small pool instead, each
thread with its own persistent connection (CONN_MAX_AGE), so one slow query
does not queue every other socket behind it (ARCHITECTURE rule 7).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

P = ParamSpec("P")
R = TypeVar("R")


def in_pool(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`fn` as a coroutine function running in the loop's thread pool."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> R:
        close_old_connections()  # drop broken or expired connections of this thread
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(run, thread_sensitive=False)
