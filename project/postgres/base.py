"""Django's PostgreSQL backend, pooled, failing fast while the server is unreachable.

With a pool, a connection is asked of `pool.getconn()`, which waits up to
DB_POOL_TIMEOUT for one while the pool retries in the background. That is right
when every connection is busy, and wrong when the server is down: every request,
`/health/` included (it starts the node runtime), would hang for the whole
timeout instead of failing at once as an unpooled connect does. So the pool
makes its connections through `TrackedConnection`, which remembers whether the
last attempt failed, and while it did, and the pool has no idle connection,
`get_new_connection` raises `OperationalError` at once (503 `unavailable`, 1011
for a socket). The pool keeps retrying; its first success closes the breaker.
docs/deployment.md, "Connection budget".
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from django.db.backends.postgresql import base


class _Outcome:
    """The result of the pool's latest connection attempt, shared by every thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.attempts = 0
        self.failed: str | None = None  # the last attempt's error, None after a success

    def record(self, error: str | None) -> None:
        with self._changed:
            self.attempts += 1
            self.failed = error
            self._changed.notify_all()

    def wait_first(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.attempts > 0, timeout)


outcome = _Outcome()


class TrackedConnection(psycopg.Connection):
    """The pool's connection class: records each attempt's outcome in `outcome`."""

    @classmethod
    def connect(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            conn = super().connect(*args, **kwargs)
        except psycopg.OperationalError as exc:
            outcome.record(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            raise
        outcome.record(None)
        return conn


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, settings_dict: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        pool_options = settings_dict.get("OPTIONS", {}).get("pool")
        if isinstance(pool_options, dict):
            pool_options.setdefault("connection_class", TrackedConnection)
        super().__init__(settings_dict, *args, **kwargs)

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.pool
        if pool is not None:
            pool.open()
            if outcome.attempts == 0:
                # The pool's first connections are being made: a refused one fails
                # within milliseconds, a timeout takes connect_timeout.
                outcome.wait_first(pool.timeout)
            if outcome.failed is not None and pool.get_stats().get("pool_available", 0) == 0:
                raise base.Database.OperationalError(
                    f"PostgreSQL unreachable (the pool retries in the background): {outcome.failed}"
                )
        return super().get_new_connection(conn_params)


__all__ = ["DatabaseWrapper", "TrackedConnection", "outcome"]
