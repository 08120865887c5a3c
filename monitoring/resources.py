"""What a node holds, each of which must stay bounded under sustained load.

Database and Redis connections (from their pools' own books), asyncio tasks,
the hub's queue and the per-connection and per-node state of the runtime.
Read by `/metrics` at scrape time and by the stats snapshot that
`GET /api/stats/` serves; `bench/soak.py` samples them to show they stay flat
(docs/deployment.md, "Connection budget"; docs/benchmarks.md, "Soak").
"""

from __future__ import annotations

import asyncio
from typing import Any


def db_pool() -> dict[str, int] | None:
    """The node's PostgreSQL pool: connections in use and idle, its bounds, callers
    waiting for a connection, and requests that timed out waiting (None on SQLite)."""
    from django.db import connections

    pool = getattr(connections["default"], "pool", None)
    if pool is None:
        return None
    stats = pool.get_stats()
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    return {
        "in_use": max(size - idle, 0),
        "idle": idle,
        "min": stats.get("pool_min", 0),
        "max": stats.get("pool_max", 0),
        "waiting": stats.get("requests_waiting", 0),
        "timeouts": stats.get("requests_errors", 0),
    }


def cache_pool() -> dict[str, int] | None:
    """The Redis cache's one pool (project/cache_pool.py): connections open and its cap
    (None when the cache is not Redis)."""
    from django.conf import settings

    from project import cache_pool as shared

    options = settings.CACHES["default"].get("OPTIONS", {})
    if options.get("pool_class") != "project.cache_pool.SharedPool":
        return None
    pools = shared.pools()  # none until the cache is first used
    return {
        "open": sum(len(getattr(p, "_connections", ())) for p in pools),
        "max": options.get("max_connections", 0),
    }


def _tasks(loop: asyncio.AbstractEventLoop | None) -> int | None:
    if loop is None or loop.is_closed():
        return None
    try:
        return len(asyncio.all_tasks(loop))
    except RuntimeError:  # the set changed under a reader on another thread
        return None


def runtime_state(runtime: Any) -> dict[str, Any]:
    """Sizes of what the runtime keeps per connection and per node."""
    from accounts import ws_auth
    from realtime import registry

    conns = list(runtime.connections.values())
    return {
        "asyncio_tasks": _tasks(runtime._loop),
        "hub_queue": runtime.hub_depth,
        "hub_groups": len(runtime.hub.groups),
        "connections": len(conns),
        "cursors": sum(len(c.cursors) for c in conns),
        "sent_runs": sum(len(r.closed) + 1 for c in conns for r in list(c.sent_runs.values())),
        "subscriptions": sum(len(c.epochs) for c in conns),
        "typing_seen": len(runtime.typing_seen),
        "pending_tasks": len(runtime._pending),
        "batches_waiting": runtime.sends.waiting
        + registry.admissions_waiting()
        + ws_auth.token_checks_waiting(),
    }


def node_resources(runtime: Any) -> dict[str, Any]:
    """Everything above in one dict (the `resources` of a stats snapshot)."""
    return {"db": db_pool(), "redis_cache": cache_pool(), "runtime": runtime_state(runtime)}
