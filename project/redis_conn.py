"""Where every Redis client of a node gets its connections: one address, two kinds.

`settings.REDIS_URL` is either a plain server (`redis://`, `rediss://`, `unix://`)
or a Redis Sentinel deployment, `redis+sentinel://` (`rediss+sentinel://` for TLS
to the master): the sentinels to ask, the name they monitor and the master's
database. With sentinels, a pool asks them for the master's address whenever it
opens a connection, so after a promotion the next connection goes to the new
master; connections to the old one fail (closed, or `READONLY` once it came back
as a replica) and are replaced (docs/deployment.md, "Redis Sentinel").

The channel layers (`layer_host`), the cache (`project/cache_pool.py`) and the topic
store (`async_pool`) all build theirs here.

`REDIS_URL` may name several servers (`split_urls`), each a plain server or a
sentinel-watched master: the channel layers shard over them as channels-redis
does, and the topic store and the cache spread their keys with the same hashing
(docs/deployment.md, "Several Redis servers").
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
# Sentinels answer from memory: a second is long. Without a timeout a sentinel
# host that vanished would hold every new connection until TCP gives up.
SENTINEL_TIMEOUT = 2.0


def _keepalive_options() -> dict[int, int]:
    """TCP keepalive after 5 s idle, 3 probes 2 s apart (Linux names; others: none).

    A master whose host vanishes sends no reset: without probes, a connection
    blocked in the channel layer's pop (no socket timeout) would wait for it
    for the kernel's two hours instead of ~11 s."""
    names = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3}
    return {getattr(socket, n): v for n, v in names.items() if hasattr(socket, n)}


KEEPALIVE: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_keepalive_options": _keepalive_options(),
}


@dataclass(frozen=True)
class SentinelTarget:
    """A `redis+sentinel://` URL, parsed."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    ssl: bool

    def master_options(self) -> dict[str, Any]:
        """Connection options for the master, as redis-py's pools take them."""
        options: dict[str, Any] = {"db": self.db}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        if self.ssl:
            options["ssl"] = True
        return options

    def sentinel_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        }
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        return options


# Between two servers: white space, or a comma where the next URL's scheme starts (a
# sentinel URL has commas of its own between its sentinels).
_SEPARATOR = re.compile(r"\s+|\s*,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(raw: str) -> list[str]:
    """The servers `REDIS_URL` names, in order: `redis://a:6379 redis://b:6379`, or
    the same with commas. The order is the ring's: every node must list them alike."""
    return [url for url in _SEPARATOR.split(raw.strip()) if url]


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """`redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db]
    [?sentinel_password=…]`; ValueError naming what is wrong.

    The user information is the master's (what `requirepass`/ACL asks of clients);
    the sentinels' own password, when they have one, is the query parameter."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError("expected redis+sentinel://host:port[,host:port]/master[/db]")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    sentinels = tuple(parse_address(item) for item in hostlist.split(",") if item.strip())
    if not sentinels:
        raise ValueError("the URL names no sentinel")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("the path must be /master or /master/db")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"the database must be a number, not {path[1]!r}")
        db = int(path[1])
    query = parse_qs(parts.query)
    return SentinelTarget(
        sentinels=sentinels,
        master=unquote(path[0]),
        db=db,
        username=unquote(user) or None,
        password=unquote(password) or None,
        sentinel_password=(query.get("sentinel_password") or [None])[0],
        ssl=parts.scheme == "rediss+sentinel",
    )


def parse_address(raw: str) -> tuple[str, int]:
    """`host[:port]` (IPv6 in brackets) of a sentinel; the port defaults to 26379."""
    item = raw.strip()
    parts = urlsplit(f"//{item}")
    try:
        port = parts.port or DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ValueError(f"{item!r}: the port is not a number between 0 and 65535") from None
    if not parts.hostname:
        raise ValueError(f"{item!r} names no host")
    return parts.hostname, port


def sentinel_url(sentinels: list[str], master: str, sentinel_password: str = "") -> str:
    """The `redis+sentinel://` URL for `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER`."""
    hosts = ",".join(
        f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in map(parse_address, sentinels)
    )
    return with_sentinel_password(
        f"redis+sentinel://{hosts}/{quote(master, safe='')}", sentinel_password
    )


def with_sentinel_password(url: str, password: str) -> str:
    """`url` with the sentinels' password as its query (replacing any there)."""
    if not password:
        return url
    return f"{url.split('?', 1)[0]}?sentinel_password={quote(password, safe='')}"


def layer_host(url: str, **options: Any) -> dict[str, Any]:
    """One `hosts` entry for channels-redis (both layers), with `options` added.

    channels-redis builds a redis-py SentinelConnectionPool itself from
    `master_name` and `sentinels` (channels_redis/utils.py, `create_pool`)."""
    if not is_sentinel(url):
        return {"address": url, **options}
    target = parse_sentinel_url(url)
    return {
        "master_name": target.master,
        "sentinels": [list(s) for s in target.sentinels],
        "sentinel_kwargs": target.sentinel_options(),
        **target.master_options(),
        **KEEPALIVE,
        **options,
    }


class BlockingSentinelPool(redis.sentinel.SentinelConnectionPool, redis.BlockingConnectionPool):
    """A sentinel-backed pool that waits for a free connection at its cap, like
    `redis.BlockingConnectionPool` (redis-py's sentinel pool raises instead)."""


class AsyncBlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """The same for redis.asyncio clients."""


def sync_pool(url: str, **options: Any) -> redis.BlockingConnectionPool:
    """A blocking pool for redis-py's synchronous client (the cache)."""
    if not is_sentinel(url):
        return redis.BlockingConnectionPool.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = redis.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=target.sentinel_options()
    )
    return BlockingSentinelPool(
        target.master, manager, **target.master_options(), **KEEPALIVE, **options
    )


def async_pool(url: str, **options: Any) -> redis.asyncio.BlockingConnectionPool:
    """A blocking pool for redis.asyncio clients (the topic store); one per event loop."""
    if not is_sentinel(url):
        return redis.asyncio.BlockingConnectionPool.from_url(url, **options)
    target = parse_sentinel_url(url)
    manager = redis.asyncio.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=target.sentinel_options()
    )
    return AsyncBlockingSentinelPool(
        target.master, manager, **target.master_options(), **KEEPALIVE, **options
    )
