"""Tether's own Prometheus metrics, declared in one place (issue 7, point 3).

django-prometheus adds HTTP and database metrics to the same registry and
serves them all at `/metrics`. Hot paths count in batches (one `inc(n)` per
fan-out, not per socket), so metrics cost nothing noticeable at 100,000+
deliveries a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTS = Counter("tether_connects_total", "Sockets accepted and welcomed", ["endpoint"])
DISCONNECTS = Counter(
    "tether_disconnects_total", "Sockets closed, by close code", ["endpoint", "code"]
)
FRAMES_IN = Counter("tether_frames_in_total", "Client frames received, by type", ["type"])
FRAMES_OUT = Counter("tether_frames_out_total", "Frames sent, by type", ["type"])
# Fan-out counts in batches, on pre-bound children (no label lookup per publication).
FRAMES_OUT_PUB = FRAMES_OUT.labels("pub")
FRAMES_OUT_MESSAGE = FRAMES_OUT.labels("message")
ERRORS = Counter("tether_errors_total", "`error` frames sent, by code", ["code"])
MESSAGES_STORED = Counter("tether_messages_stored_total", "Chat messages stored (not duplicates)")
PUBLICATIONS = Counter(
    "tether_publications_total", "Topic publications fanned out by this node's hub"
)
SEND_ACK = Histogram(
    "tether_send_ack_seconds", "From a `send` frame in to its `ack` out", buckets=LATENCY_BUCKETS
)
SEND_BATCH_SIZE = Histogram(
    "tether_send_batch_size",
    "Sends stored together in one transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PUBLISH_DELIVER = Histogram(
    "tether_publish_deliver_seconds",
    "From a publication's timestamp to its fan-out on this node",
    buckets=LATENCY_BUCKETS,
)
SYNC_REPLAYED = Counter("tether_sync_replayed_messages_total", "Messages replayed by `sync`")
SYNCS = Counter("tether_syncs_total", "`sync` requests answered")
RECOVERIES = Counter(
    "tether_recoveries_total", "`subscribe` with `since`, by outcome", ["recovered"]
)
HEARTBEAT_TIMEOUTS = Counter("tether_heartbeat_timeouts_total", "Sockets closed with 4408")
RATE_LIMITED = Counter("tether_rate_limited_total", "Frames refused by the rate limit")
SLOW_CONSUMER_CLOSES = Counter(
    "tether_slow_consumer_closes_total", "Sockets closed with 4509 (outbound queue overflow)"
)


class RuntimeCollector(Collector):
    """Gauges read from the node runtime at scrape time (no bookkeeping on hot paths)."""

    def collect(self) -> Iterator[Any]:
        from realtime.runtime import get_runtime

        runtime = get_runtime()
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
    """The node's pools and state sizes (monitoring/resources.py)."""
    from monitoring import resources

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
    for kind, value in resources.runtime_state(runtime).items():
        if value is not None and kind not in ("connections", "hub_queue", "subscriptions"):
            state.add_metric([kind], value)
    yield state


_collector = RuntimeCollector()
REGISTRY.register(_collector)
