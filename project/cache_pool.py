"""One Redis connection pool per node for Django's cache.

Django builds a cache object, and with it a fresh redis-py pool, for every
thread and every asyncio context that touches `cache`; under ASGI each HTTP
request is such a context. Each of those pools kept its connection until the
garbage collector found it, so a node's Redis clients grew with its HTTP load.
`SharedPool.from_url` hands every cache object of the process the same pool,
which is bounded: a caller waits for a free connection, then fails with
`ConnectionError` (REST answers 503 `unavailable`). See docs/deployment.md,
"Connection budget". The pool itself comes from project/redis_conn.py, so a
`redis+sentinel://` address follows the master's failover.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from project.redis_conn import sync_pool

_lock = threading.Lock()
_pools: dict[tuple[str, tuple[tuple[str, Any], ...]], redis.BlockingConnectionPool] = {}


class SharedPool(redis.BlockingConnectionPool):
    """`pool_class` for Django's RedisCache: one blocking pool per URL and options."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.BlockingConnectionPool:
        key = (url, tuple(sorted(kwargs.items())))
        with _lock:
            pool = _pools.get(key)
            if pool is None:
                pool = _pools[key] = sync_pool(url, **kwargs)
            return pool

    @classmethod
    def pools(cls) -> list[redis.BlockingConnectionPool]:
        """Every shared pool of this process (the node's figures read them)."""
        with _lock:
            return list(_pools.values())
