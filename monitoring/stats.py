"""A node's own figures: what it serves, how fast, how late, and the health of its process.

Each maintenance pass takes a snapshot (`NodeStats.snapshot`) and stores it on
the node's row, so `GET /api/stats/` can name every live node from any node,
and publishes it on the staff topic `ops:stats` for the `/ops/` page. Rates
and latency percentiles cover the interval since the previous snapshot; they
come from the Prometheus counters and histograms of `monitoring.metrics`, so
the hot paths keep no extra books.
"""

from __future__ import annotations

import gc
import os
import resource
import threading
import time
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from monitoring import metrics

OPS_TOPIC = "ops:stats"


def _total(metric: MetricWrapperBase, suffix: str = "_total") -> dict[tuple, float]:
    """Current sample values of a metric, keyed by label values."""
    out: dict[tuple, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _buckets(histogram: MetricWrapperBase) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram without labels."""
    out = []
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out.append((float(sample.labels["le"]), sample.value))
    return sorted(out)


def quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> Any:
    """The q-quantile (seconds) of what a histogram observed between two readings,
    estimated like Prometheus' histogram_quantile; None when nothing was observed."""
    if not after:
        return None
    old = dict(before)
    counts = [(bound, value - old.get(bound, 0.0)) for bound, value in after]
    total = counts[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in counts:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(count - lower_count, 1e-9)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _by_code(samples: dict[tuple, float]) -> dict[str, float]:
    """Closes per code, summed over endpoints (the metric is per endpoint and code)."""
    out: dict[str, float] = {}
    for labels, value in samples.items():
        code = dict(labels)["code"]
        out[code] = out.get(code, 0.0) + value
    return out


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def process_diagnostics(loop_lag: float) -> dict[str, Any]:
    """RSS, open file descriptors against the limit, threads, GC, event-loop lag."""
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "pid": os.getpid(),
        "rss_bytes": _rss_bytes(),
        "open_fds": fds,
        "fd_limit": soft,
        "threads": threading.active_count(),
        "gc_counts": list(gc.get_count()),
        "gc_collections": [generation["collections"] for generation in gc.get_stats()],
        "event_loop_lag_ms": round(loop_lag * 1000, 1),
    }


def _ms(seconds: Any) -> Any:
    return None if seconds is None else round(seconds * 1000, 2)


class NodeStats:
    """Snapshots of this node's figures, each relative to the previous one."""

    def __init__(self) -> None:
        self._at = time.monotonic()
        self._previous = self._read()

    @staticmethod
    def _read() -> dict[str, Any]:
        return {
            "messages": sum(_total(metrics.MESSAGES_STORED).values()),
            "publications": sum(_total(metrics.PUBLICATIONS).values()),
            "deliveries": sum(
                v
                for k, v in _total(metrics.FRAMES_OUT).items()
                if dict(k)["type"] in ("pub", "message")
            ),
            "closes": _by_code(_total(metrics.DISCONNECTS)),
            "timeouts": sum(_total(metrics.HEARTBEAT_TIMEOUTS).values()),
            "send_ack": _buckets(metrics.SEND_ACK),
            "publish_deliver": _buckets(metrics.PUBLISH_DELIVER),
        }

    def snapshot(self, connections: list[Any], loop_lag: float) -> dict[str, Any]:
        now = time.monotonic()
        current = self._read()
        previous, elapsed = self._previous, max(now - self._at, 1e-6)
        self._previous, self._at = current, now

        def rate(name: str) -> float:
            return round((current[name] - previous[name]) / elapsed, 2)

        by_endpoint: dict[str, int] = {"chat": 0, "stream": 0}
        subscriptions = 0
        for conn in connections:
            by_endpoint[conn.info.endpoint] = by_endpoint.get(conn.info.endpoint, 0) + 1
            subscriptions += len(conn.epochs)
        return {
            "at": int(time.time() * 1000),
            "interval_s": round(elapsed, 2),
            "connections": sum(by_endpoint.values()),
            "connections_by_endpoint": by_endpoint,
            "subscriptions": subscriptions,
            "messages_per_s": rate("messages"),
            "publications_per_s": rate("publications"),
            "deliveries_per_s": rate("deliveries"),
            "heartbeat_timeouts": int(current["timeouts"]),
            "closes_by_code": {code: int(n) for code, n in current["closes"].items()},
            "latency_ms": {
                "send_ack_p50": _ms(quantile(previous["send_ack"], current["send_ack"], 0.5)),
                "send_ack_p99": _ms(quantile(previous["send_ack"], current["send_ack"], 0.99)),
                "publish_deliver_p50": _ms(
                    quantile(previous["publish_deliver"], current["publish_deliver"], 0.5)
                ),
                "publish_deliver_p99": _ms(
                    quantile(previous["publish_deliver"], current["publish_deliver"], 0.99)
                ),
            },
            "process": process_diagnostics(loop_lag),
        }
