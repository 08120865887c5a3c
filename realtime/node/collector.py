"""What the node runtime holds, read where it is: Prometheus gauges at scrape time and
the `resources` of each stats snapshot (no bookkeeping on hot paths).

Each figure must stay bounded under sustained load (docs/deployment.md,
"Connection budget"; docs/benchmarks.md, "Soak").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from monitoring import resources
from realtime.node.batching import Batcher


def _tasks(loop: asyncio.AbstractEventLoop | None) -> int | None:
    if loop is None or loop.is_closed():
        return None
    try:
        return len(asyncio.all_tasks(loop))
    except RuntimeError:  # the set changed under a reader on another thread
        return None


def runtime_state(runtime: Any) -> dict[str, Any]:
    """Sizes of what the runtime keeps per connection and per node."""
    conns = list(runtime.connections.values())
    return {
        "asyncio_tasks": _tasks(runtime._loop),
        "hub_queue": runtime.hub_depth,
        "hub_groups": len(runtime.hub.groups),
        "connections": len(conns),
        "cursors": sum(len(c.cursors) for c in conns),
        "sent_runs": sum(len(r.closed) + 1 for c in conns for r in list(c.sent_runs.values())),
        "subscriptions": sum(len(c.epochs) for c in conns),
        "pending_tasks": len(runtime._pending),
        "batches_waiting": Batcher.waiting_everywhere(),
        **runtime.part_sizes(),
    }


def node_resources(runtime: Any) -> dict[str, Any]:
    """Everything above in one dict (the `resources` of a stats snapshot)."""
    return {
        "db": resources.db_pool(),
        "redis_cache": resources.cache_pool(),
        "runtime": runtime_state(runtime),
    }


class RuntimeCollector(Collector):
    """Gauges read from the node runtime at scrape time (no bookkeeping on hot paths)."""

    def __init__(self, get_runtime: Callable[[], Any]) -> None:
        self._get_runtime = get_runtime

    def collect(self) -> Iterator[Any]:
        runtime = self._get_runtime()
        connections = GaugeMetricFamily(
            "tether_connections", "Open sockets on this node, by endpoint", labels=["endpoint"]
        )
        counts: dict[str, int] = {"chat": 0, "stream": 0}
        subscriptions = 0
        for conn in list(runtime.connections.values()):
            counts[conn.info.endpoint] = counts.get(conn.info.endpoint, 0) + 1
            subscriptions += len(conn.epochs)
        for endpoint, count in counts.items():
            connections.add_metric([endpoint], count)
        yield connections
        yield GaugeMetricFamily(
            "tether_subscriptions", "Topic subscriptions on this node", value=subscriptions
        )
        yield GaugeMetricFamily(
            "tether_hub_queue_depth",
            "Layer messages waiting for this node's hub",
            value=runtime.hub_depth,
        )
        yield GaugeMetricFamily(
            "tether_event_loop_lag_seconds",
            "How late the once-a-second sweeper woke up",
            value=runtime.loop_lag,
        )
        yield from _resource_metrics(runtime)


def _resource_metrics(runtime: Any) -> Iterator[Any]:
    """The node's pools (monitoring/resources.py) and the sizes of its state."""
    db = resources.db_pool()
    if db is not None:
        in_db = GaugeMetricFamily(
            "tether_db_connections",
            "PostgreSQL connections this node holds, in use or idle in its pool",
            labels=["state"],
        )
        in_db.add_metric(["in_use"], db["in_use"])
        in_db.add_metric(["idle"], db["idle"])
        yield in_db
        yield GaugeMetricFamily(
            "tether_db_pool_max", "This node's PostgreSQL pool size (DB_POOL_SIZE)", value=db["max"]
        )
        yield GaugeMetricFamily(
            "tether_db_pool_waiting",
            "Callers waiting for a free PostgreSQL connection",
            value=db["waiting"],
        )
        yield CounterMetricFamily(
            "tether_db_pool_timeouts",
            "Requests that found no free PostgreSQL connection in DB_POOL_TIMEOUT (503)",
            value=db["timeouts"],
        )
    if runtime.db_max_connections:
        yield GaugeMetricFamily(
            "tether_db_server_max_connections",
            "The PostgreSQL server's max_connections, read when the node started",
            value=runtime.db_max_connections,
        )
    cache = resources.cache_pool()
    if cache is not None:
        yield GaugeMetricFamily(
            "tether_redis_cache_connections",
            "Redis connections open in this node's cache pool",
            value=cache["open"],
        )
    state = GaugeMetricFamily(
        "tether_runtime_entries",
        "Entries the node runtime keeps, by kind (each bounded by the load, not by time)",
        labels=["kind"],
    )
    for kind, value in runtime_state(runtime).items():
        if value is not None and kind not in ("connections", "hub_queue", "subscriptions"):
            state.add_metric([kind], value)
    yield state


_registered: list[RuntimeCollector] = []


def register(get_runtime: Callable[[], Any]) -> None:
    """Serve the runtime's gauges on `/metrics` (once per process)."""
    if not _registered:
        _registered.append(RuntimeCollector(get_runtime))
        REGISTRY.register(_registered[0])
