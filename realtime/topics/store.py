"""Topic history: offsets, capped history and an epoch per topic (sequences: docs/architecture.md).

Two stores behind one interface. With Redis, one Lua script moves offset,
history and epoch together, so no reader ever sees one without the others; the
epoch is recreated whenever the history key is gone (restart without
persistence, flush, expiry) or the server is not the replication history the
epoch was written under (a replica promoted by Sentinel, a restart), so a
client never believes a recovery that lost data. Embedded: the same in memory,
with new epochs at every process start.

Only a publication creates a topic's state. Reading a topic that has none
(never published, or its keys lost) stores nothing and answers offset 0 in
`EMPTY_EPOCH`, so probing random names costs no memory (docs/architecture.md,
"Topic choices").
"""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from realtime.node.layer_compat import shard_index

# (offset, ts in ms, data as compact JSON text)
Entry = tuple[int, int, str]


@dataclass(frozen=True)
class Namespace:
    """A namespace's history size and lifetime, and who may read it."""

    name: str
    history_size: int
    history_ttl: int
    access: str


@dataclass
class Snapshot:
    """A topic's position, and what history holds after a given offset."""

    offset: int
    epoch: str
    # Entries after the asked offset, oldest first; None when they could not
    # all be read (another epoch, trimmed, expired, or nothing asked).
    entries: list[Entry] | None


def new_epoch() -> str:
    return "e-" + secrets.token_urlsafe(6)


# The epoch of a topic with no stored position: nothing published yet, or its
# state lost (flush, restart without persistence, expiry of the hash). It only
# ever goes with offset 0 and no publication carries it (`new_epoch` draws
# eight characters after "e-"), so handing it out needs nothing stored, and a
# topic that restarts at 1 after losing its state still gets a fresh epoch:
# a reader's epoch cannot be the one a later first publication draws, since
# "never published" and "lost" look alike without a record.
EMPTY_EPOCH = "e-0"


def _matching(since: int | None, epoch: str | None) -> str | None:
    """The epoch a resume from `since` must match; None: whichever is current.

    A client at offset 0 of `EMPTY_EPOCH` holds nothing of the topic, so every
    publication from offset 1 of the current epoch, if history still has them
    all, is its whole state (docs/protocol.md, "Epochs")."""
    if since == 0 and epoch == EMPTY_EPOCH:
        return None
    return epoch


def _fresh(entries: list[Entry], ns: Namespace) -> list[Entry]:
    """Drop entries older than the namespace's history lifetime."""
    cutoff = int(time.time() * 1000) - ns.history_ttl * 1000
    return [e for e in entries if e[1] >= cutoff]


def _complete(entries: list[Entry], after: int, upto: int) -> bool:
    return len(entries) == upto - after and (not entries or entries[0][0] == after + 1)


class TopicStore:
    """The interface both stores implement."""

    async def publish(self, topic: str, ns: Namespace, data: str, ts: int) -> tuple[int, str]:
        """Append one publication; (offset, epoch)."""
        raise NotImplementedError

    async def snapshot(
        self, topic: str, ns: Namespace, since: int | None, epoch: str | None
    ) -> Snapshot:
        """Position and, when `since` is given, every entry after it if all are present.

        `epoch` None means "whatever is current" (REST history). Creates nothing for
        a topic without publications: (0, EMPTY_EPOCH)."""
        raise NotImplementedError

    async def read_range(
        self, topic: str, ns: Namespace, after: int, upto: int
    ) -> tuple[str | None, list[Entry]]:
        """The current epoch and the entries after `after` up to `upto`, oldest first;
        missing ones left out."""
        raise NotImplementedError

    async def heads(self, topics: list[str]) -> dict[str, tuple[int, str]]:
        """Current (offset, epoch) of each topic that has one."""
        raise NotImplementedError

    async def reset(self) -> None:
        """Forget everything (tests; a new epoch for every topic)."""
        raise NotImplementedError


@dataclass
class _MemoryTopic:
    epoch: str
    offset: int = 0
    history: deque[Entry] = field(default_factory=deque)


class MemoryStore(TopicStore):
    """Embedded mode: one process holds the history; every start is a new epoch."""

    def __init__(self) -> None:
        self.topics: dict[str, _MemoryTopic] = {}

    def _topic(self, topic: str) -> _MemoryTopic:
        state = self.topics.get(topic)
        if state is None:
            state = self.topics[topic] = _MemoryTopic(epoch=new_epoch())
        return state

    async def publish(self, topic: str, ns: Namespace, data: str, ts: int) -> tuple[int, str]:
        state = self._topic(topic)
        state.offset += 1
        if ns.history_size:
            state.history.append((state.offset, ts, data))
            while len(state.history) > ns.history_size:
                state.history.popleft()
        return state.offset, state.epoch

    async def snapshot(
        self, topic: str, ns: Namespace, since: int | None, epoch: str | None
    ) -> Snapshot:
        state = self.topics.get(topic) or _MemoryTopic(epoch=EMPTY_EPOCH)
        epoch = _matching(since, epoch)
        entries = None
        if since is not None and epoch in (None, state.epoch) and 0 <= since <= state.offset:
            found = _fresh([e for e in state.history if e[0] > since], ns)
            if _complete(found, since, state.offset):
                entries = found
        return Snapshot(state.offset, state.epoch, entries)

    async def read_range(
        self, topic: str, ns: Namespace, after: int, upto: int
    ) -> tuple[str | None, list[Entry]]:
        state = self.topics.get(topic)
        if state is None:
            return None, []
        return state.epoch, _fresh([e for e in state.history if after < e[0] <= upto], ns)

    async def heads(self, topics: list[str]) -> dict[str, tuple[int, str]]:
        return {t: (s.offset, s.epoch) for t in topics if (s := self.topics.get(t)) is not None}

    async def reset(self) -> None:
        self.topics.clear()


# KEYS: meta hash {e: epoch, o: offset, r: offset when history last restarted,
#       h: the server's replication history the epoch was written under},
#       history stream (entry id = offset).
# ARGV: mode, candidate epoch, meta ttl, then per mode:
#   pub:  data, ts, history size, history ttl          → {offset, epoch}
#   read: since (-1: none), since epoch ("": any), max → {offset, epoch, entries}
# A read of a topic without a hash writes nothing and answers epoch "" (the
# caller's EMPTY_EPOCH): only a publication creates a topic's keys.
# A new epoch, whenever history may have been lost:
# - the history key is gone while publications since the last restart should be
#   in it (restart without persistence, flush, eviction);
# - the server's replication history (`master_replid`) is not the one the epoch
#   was written under. A replica promoted by Sentinel, or a master restarted from
#   its own files, gets a new one; either may lack the newest writes (replication
#   and `appendfsync everysec` are asynchronous), and nothing left on the server
#   says which topics they touched, so every topic starts a new epoch at its
#   next touch, with an empty history from the offset it has (docs/architecture.md,
#   "Topic choices"). Offsets are never reused within an epoch.
_SCRIPT = """
local history_id = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
local epoch = redis.call('HGET', KEYS[1], 'e')
if (not epoch) and ARGV[1] ~= 'pub' then
  return {0, '', {}}
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local restarted = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local moved = epoch and redis.call('HGET', KEYS[1], 'h') ~= history_id
if (not epoch) or moved or (offset > restarted and redis.call('EXISTS', KEYS[2]) == 0) then
  epoch = ARGV[2]
  if moved then
    redis.call('DEL', KEYS[2])
  end
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', offset, 'r', offset, 'h', history_id)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if ARGV[1] == 'pub' then
  offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
  if tonumber(ARGV[6]) > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], offset .. '-0', 'd', ARGV[4], 't', ARGV[5])
    redis.call('EXPIRE', KEYS[2], ARGV[7])
  else
    redis.call('HSET', KEYS[1], 'r', offset)
  end
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {offset, epoch}
end
local since = tonumber(ARGV[4])
local entries = {}
if since >= 0 and (ARGV[5] == '' or ARGV[5] == epoch) and since < offset
   and offset - since <= tonumber(ARGV[6]) then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', offset .. '-0')
end
return {offset, epoch, entries}
"""
# The offset and epoch outlive the history by a day, so an idle topic keeps
# counting instead of restarting at 1.
META_EXTRA_TTL = 86400
# Redis connections per node for topic history (commands are short; more only queue).
REDIS_POOL_SIZE = 50


def _keys(topic: str) -> list[str]:
    # One hash tag per topic: both keys live on one Redis Cluster slot.
    return [f"tether:topic:{{{topic}}}:meta", f"tether:topic:{{{topic}}}:history"]


def _entries(raw: list[Any]) -> list[Entry]:
    out = []
    for entry_id, fields in raw:
        # A script returns the flat reply; redis-py's XRANGE parses it into a dict.
        values = fields if isinstance(fields, dict) else dict(zip(*[iter(fields)] * 2, strict=True))
        offset = int(entry_id.split(b"-", 1)[0])
        out.append((offset, int(values[b"t"]), values[b"d"].decode()))
    return out


class RedisStore(TopicStore):
    """Production: history in Redis streams, shared by every node. With several
    servers each topic lives on one, picked as the channel layers pick (the ring)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        # redis.asyncio clients belong to one event loop: per loop, one per server.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[tuple[Any, Any]]
        ] = weakref.WeakKeyDictionary()

    def _servers(self) -> list[tuple[Any, Any]]:
        loop = asyncio.get_running_loop()
        pairs = self._clients.get(loop)
        if pairs is None:
            import redis.asyncio as aioredis
            from django.utils.module_loading import import_string

            # A blocking pool: a burst of subscribes waits for a free connection
            # instead of failing (redis-py's default pool raises at its cap). Its
            # factory is the one settings name (a plain server or sentinels), loaded
            # as Django loads the cache's pool class: the project is above realtime.
            make_pool = import_string(settings.REDIS_ASYNC_POOL)
            pairs = []
            for url in self.urls:
                pool = make_pool(
                    url, max_connections=REDIS_POOL_SIZE, timeout=10, socket_timeout=10
                )
                client = aioredis.Redis(connection_pool=pool)
                pairs.append((client, client.register_script(_SCRIPT)))
            self._clients[loop] = pairs
        return pairs

    def _client(self, topic: str) -> tuple[Any, Any]:
        """The client and script of the server holding `topic`."""
        servers = self._servers()
        return servers[shard_index(topic, len(servers))]

    async def publish(self, topic: str, ns: Namespace, data: str, ts: int) -> tuple[int, str]:
        _, script = self._client(topic)
        offset, epoch = await script(
            keys=_keys(topic),
            args=[
                "pub",
                new_epoch(),
                ns.history_ttl + META_EXTRA_TTL,
                data,
                ts,
                ns.history_size,
                ns.history_ttl,
            ],
        )
        return int(offset), epoch.decode()

    async def snapshot(
        self, topic: str, ns: Namespace, since: int | None, epoch: str | None
    ) -> Snapshot:
        _, script = self._client(topic)
        offset, current, raw = await script(
            keys=_keys(topic),
            args=[
                "read",
                new_epoch(),
                ns.history_ttl + META_EXTRA_TTL,
                -1 if since is None else since,
                _matching(since, epoch) or "",
                ns.history_size,
            ],
        )
        offset, current = int(offset), current.decode() or EMPTY_EPOCH
        epoch = _matching(since, epoch)
        entries = None
        if since is not None and epoch in (None, current) and 0 <= since <= offset:
            found = _fresh(_entries(raw), ns)
            if _complete(found, since, offset):
                entries = found
        return Snapshot(offset, current, entries)

    async def read_range(
        self, topic: str, ns: Namespace, after: int, upto: int
    ) -> tuple[str | None, list[Entry]]:
        client, _ = self._client(topic)
        meta, history = _keys(topic)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hget(meta, "e")
            pipe.xrange(history, f"{after + 1}-0", f"{upto}-0")
            epoch, raw = await pipe.execute()
        return (epoch.decode() if epoch else None), _fresh(_entries(raw), ns)

    async def heads(self, topics: list[str]) -> dict[str, tuple[int, str]]:
        servers = self._servers()
        by_server: dict[int, list[str]] = {}
        for topic in topics:
            by_server.setdefault(shard_index(topic, len(servers)), []).append(topic)
        found = await asyncio.gather(
            *(self._heads_on(servers[i][0], names) for i, names in by_server.items())
        )
        return {topic: head for part in found for topic, head in part.items()}

    @staticmethod
    async def _heads_on(client: Any, topics: list[str]) -> dict[str, tuple[int, str]]:
        async with client.pipeline(transaction=False) as pipe:
            for topic in topics:
                pipe.hmget(_keys(topic)[0], "o", "e")
            rows = await pipe.execute()
        return {
            topic: (int(offset), epoch.decode())
            for topic, (offset, epoch) in zip(topics, rows, strict=True)
            if epoch is not None
        }

    async def reset(self) -> None:
        for client, _ in self._servers():
            async for key in client.scan_iter(match="tether:topic:*", count=1000):
                await client.delete(key)


_store: TopicStore | None = None


def get_store() -> TopicStore:
    """This process's topic store: Redis when `REDIS_URL` names servers, else memory."""
    global _store
    if _store is None:
        _store = RedisStore(settings.REDIS_URLS) if settings.REDIS_URLS else MemoryStore()
    return _store
