"""What a node holds, read from outside: the soak's samples (`bench/soak.py`).

Each figure comes from where an operator would read it, not from the node's own
word: PostgreSQL's `pg_stat_activity` (connections under the node's
`application_name`), `/proc/<pid>` (RSS, open file descriptors, threads, and
the node's TCP connections to the database and Redis ports), Redis' `CLIENT
LIST`. The node's `/metrics` adds what only it can know: asyncio tasks, the
hub's queue and the sizes of its runtime state.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

# The figures compared between the soak's halves, in print order.
FIGURES = (
    "pg_conns",
    "pg_sockets",
    "redis_sockets",
    "rss_mb",
    "fds",
    "threads",
    "tasks",
    "hub_queue",
    "cursors",
    "sent_runs",
    "typing_seen",
    "hub_groups",
    "topic_groups",
    "topics_in_memory",
    "pending_tasks",
    "batches_waiting",
    "redis_cache",
)
_ENTRY = re.compile(r'^tether_runtime_entries\{kind="(\w+)"\} (\S+)$', re.M)
_GAUGE = re.compile(r"^(tether_hub_queue_depth|tether_redis_cache_connections) (\S+)$", re.M)


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_peers(pid: int) -> dict[int, int]:
    """Established TCP connections of process `pid`, counted by remote port."""
    inodes = _socket_inodes(pid)
    counts: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] != "01" or int(parts[9]) not in inodes:  # 01: ESTABLISHED
                        continue
                    port = int(parts[2].rsplit(":", 1)[1], 16)
                    counts[port] = counts.get(port, 0) + 1
        except FileNotFoundError:
            continue
    return counts


@dataclass
class Target:
    """One node: its process, name (its `application_name` is `tether:<name>`), URL."""

    name: str
    pid: int
    url: str


class Probe:
    """Samples every node; one row per node per call."""

    def __init__(self, database_url: str, redis_url: str, pg_port: int, redis_port: int) -> None:
        self.db = psycopg.connect(database_url, autocommit=True, application_name="tether-soak")
        self.redis = redis.Redis.from_url(redis_url)
        self.pg_port, self.redis_port = pg_port, redis_port

    def close(self) -> None:
        self.db.close()
        self.redis.close()

    def pg_by_node(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE 'tether:%%' GROUP BY 1"
        ).fetchall()
        return {name.split(":", 1)[1]: int(n) for name, n in rows}

    def redis_clients(self) -> int:
        return len(self.redis.client_list())

    def sample(self, targets: list[Target]) -> list[dict[str, Any]]:
        at = time.time()
        pg = self.pg_by_node()
        rows = []
        for target in targets:
            status = _status(target.pid)
            peers = tcp_peers(target.pid)
            row: dict[str, Any] = {
                "at": at,
                "node": target.name,
                "pg_conns": pg.get(target.name, 0),
                "pg_sockets": peers.get(self.pg_port, 0),
                "redis_sockets": peers.get(self.redis_port, 0),
                "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                "fds": len(os.listdir(f"/proc/{target.pid}/fd")),
                "threads": int(status["Threads"]),
            }
            row.update(scrape(target.url))
            rows.append(row)
        return rows


def scrape(url: str) -> dict[str, float]:
    """The node's own figures from `/metrics` (runtime entries, hub queue, cache pool)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for kind, value in _ENTRY.findall(text):
        out["tasks" if kind == "asyncio_tasks" else kind] = float(value)
    for name, value in _GAUGE.findall(text):
        out["hub_queue" if name == "tether_hub_queue_depth" else "redis_cache"] = float(value)
    return out


@dataclass
class Margin:
    """How much a figure may rise from the first half's peak to the second half's."""

    absolute: float
    relative: float = 0.0

    def allows(self, first: float, second: float) -> bool:
        return second <= first * (1 + self.relative) + self.absolute


# Chosen from 30-minute runs (docs/benchmarks.md, "Soak"): room for the load's
# own jitter (a reconnect wave, a burst of REST threads), none for a leak that
# grows with time. RSS gets 10 % plus 25 MB: CPython's arenas and the cyclic
# collector, which a node runs rarely (docs/architecture.md), move in steps.
MARGINS: dict[str, Margin] = {
    # The pool grows on demand within DB_POOL_SIZE: a busier moment is no leak. Never
    # above DB_POOL_SIZE is checked on its own (bench/soak.py).
    "pg_conns": Margin(4),
    "pg_sockets": Margin(4),
    "redis_sockets": Margin(4),
    "rss_mb": Margin(25, 0.10),
    "fds": Margin(30),
    "threads": Margin(4),
    "tasks": Margin(60, 0.10),
    "hub_queue": Margin(200),
    "cursors": Margin(40, 0.10),
    "sent_runs": Margin(40, 0.10),
    "typing_seen": Margin(20),
    "hub_groups": Margin(10),
    "topic_groups": Margin(10),
    "topics_in_memory": Margin(10),
    "pending_tasks": Margin(40),
    "batches_waiting": Margin(200),
    "redis_cache": Margin(2),
}


def growth(rows: list[dict[str, Any]], warmup: float) -> list[dict[str, Any]]:
    """Per node and figure: peak of the first half (after `warmup` of the run's
    samples) against the peak of the second half, and whether the margin holds."""
    out = []
    for node in sorted({r["node"] for r in rows}):
        mine = [r for r in rows if r["node"] == node]
        start = int(len(mine) * warmup)
        body = mine[start:]
        half = len(body) // 2
        first, second = body[:half], body[half:]
        if not first or not second:
            continue
        for figure in FIGURES:
            a = [r[figure] for r in first if r.get(figure) is not None]
            b = [r[figure] for r in second if r.get(figure) is not None]
            if not a or not b:
                continue
            margin = MARGINS[figure]
            out.append(
                {
                    "node": node,
                    "figure": figure,
                    "first_half_max": max(a),
                    "second_half_max": max(b),
                    "last": b[-1],
                    "ok": margin.allows(max(a), max(b)),
                }
            )
    return out
