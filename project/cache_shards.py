"""Django's Redis cache spread over several servers, by key, on the layers' ring.

Django's `RedisCache` given several servers writes to the first and reads from the
others, as replicas; Tether's `REDIS_URL` lists peers instead (docs/deployment.md,
"Several Redis servers"). Django leaves room for this: its client picks a server
per key in `get_client(key)`, "e.g. sharding". Each key goes to the server the
channel layers would pick for that name, so one ring spreads every kind of load.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient

from realtime.node.layer_compat import shard_index


class ShardedCacheClient(RedisCacheClient):
    """One pool per server; every key on its own server, multi-key calls split."""

    def _server_of(self, key: Any) -> int:
        return shard_index(str(key), len(self._servers))

    def _client_at(self, index: int) -> Any:
        if index not in self._pools:
            self._pools[index] = self._pool_class.from_url(
                self._servers[index], **self._pool_options
            )
        return self._client(connection_pool=self._pools[index])

    def _by_server(self, keys: Iterable[Any]) -> dict[int, list[Any]]:
        groups: dict[int, list[Any]] = {}
        for key in keys:
            groups.setdefault(self._server_of(key), []).append(key)
        return groups

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        if key is None:
            raise TypeError("a sharded cache needs the key to pick its server")
        return self._client_at(self._server_of(key))

    def get_many(self, keys: list[Any]) -> dict[Any, Any]:
        found: dict[Any, Any] = {}
        for index, part in self._by_server(keys).items():
            values = self._client_at(index).mget(part)
            found.update(
                (k, self._serializer.loads(v))
                for k, v in zip(part, values, strict=True)
                if v is not None
            )
        return found

    def set_many(self, data: dict[Any, Any], timeout: int | None) -> None:
        for index, part in self._by_server(data).items():
            pipeline = self._client_at(index).pipeline()
            pipeline.mset({k: self._serializer.dumps(data[k]) for k in part})
            if timeout is not None:
                for key in part:
                    pipeline.expire(key, timeout)
            pipeline.execute()

    def delete_many(self, keys: list[Any]) -> None:
        for index, part in self._by_server(keys).items():
            self._client_at(index).delete(*part)

    def clear(self) -> bool:
        return all([bool(self._client_at(i).flushdb()) for i in range(len(self._servers))])


class ShardedRedisCache(RedisCache):
    """`BACKEND` for a cache whose `LOCATION` lists peer servers, not replicas."""

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ShardedCacheClient
