"""What a node holds, each of which must stay bounded under sustained load.

Database and Redis connections, from their pools' own books (the runtime's own
state is read by realtime/node/collector.py). Read by `/metrics` at scrape time
and by the stats snapshot that `GET /api/stats/` serves; `bench/soak.py` samples
them to show they stay flat (docs/deployment.md, "Connection budget"; docs/benchmarks.md, "Soak").
"""

from __future__ import annotations


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
    """The Redis cache's pool: connections open and its cap (None when the cache is
    not Redis or its `pool_class` keeps no books, as project/cache_pool.py does)."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    options = settings.CACHES["default"].get("OPTIONS", {})
    # The class settings name, loaded as Django loads it: monitoring reads any pool
    # class that lists its pools, without importing the project that chose it.
    pools = (
        getattr(import_string(options["pool_class"]), "pools", None)
        if options.get("pool_class")
        else None
    )
    if pools is None:
        return None
    return {
        "open": sum(len(getattr(p, "_connections", ())) for p in pools()),
        "max": options.get("max_connections", 0),
    }
