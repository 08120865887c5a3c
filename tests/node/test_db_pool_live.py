"""A node's PostgreSQL connections are one bounded pool (docs/deployment.md, "Connection
budget"): concurrent HTTP requests never take more than DB_POOL_SIZE, what they took goes
back, a request that finds none free is 503 `unavailable` and the node keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.support.live import DaphneNode, Stack, http
from tests.support.names import unique

pytestmark = pytest.mark.timeout(180)


def node_connections(stack: Stack, node: DaphneNode) -> int:
    """The node's connections as PostgreSQL sees them (`application_name`)."""
    rows = stack.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        f"tether:{node.name}",
    )
    return int(rows[0][0])


class PeakWatcher:
    """Samples a node's connection count in a thread until stopped; keeps the peak."""

    def __init__(self, stack: Stack, node: DaphneNode) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stack, node), daemon=True)

    def _run(self, stack: Stack, node: DaphneNode) -> None:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (f"tether:{node.name}",),
                ).fetchone()
                self.peak = max(self.peak, count)
                self._stop.wait(0.02)

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_concurrent_requests_never_take_more_than_the_pool_and_give_it_back(
    production_stack: Stack, make_node: Callable[..., DaphneNode]
) -> None:
    # The reproduction, smaller: sign-ups with a token each, 8 at a time.
    node = make_node(production_stack, DB_POOL_SIZE="3", DB_POOL_MIN="1", DB_POOL_MAX_IDLE="1")
    names = [unique("pool") for _ in range(24)]
    with PeakWatcher(production_stack, node) as watcher, ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(node.register, names))
    assert len(set(tokens)) == len(names)
    assert 1 <= watcher.peak <= 3, f"the node held {watcher.peak} connections (pool of 3)"
    # Idle connections beyond DB_POOL_MIN close, one a DB_POOL_MAX_IDLE period.
    deadline = time.monotonic() + 30
    while node_connections(production_stack, node) > 1:
        assert time.monotonic() < deadline, "connections did not go back down after the load"
        time.sleep(0.2)  # polling PostgreSQL's own view, which changes by itself


def test_a_request_that_finds_no_free_connection_is_503_and_the_node_recovers(
    production_stack: Stack, make_node: Callable[..., DaphneNode]
) -> None:
    node = make_node(production_stack, DB_POOL_SIZE="2", DB_POOL_MIN="1", DB_POOL_TIMEOUT="1")
    token = node.register(unique("pool"))
    auth = {"Authorization": f"Bearer {token}"}
    # Two requests stuck behind a lock hold both of the node's connections.
    lock = psycopg.connect(production_stack.database_url)
    lock.execute("LOCK TABLE accounts_apitoken IN ACCESS EXCLUSIVE MODE")
    stuck: list[int] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(lambda: http("GET", node.url + "/api/me/", headers=auth, timeout=30))
                for _ in range(2)
            ]
            deadline = time.monotonic() + 10
            while (
                production_stack.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                    "AND wait_event_type = 'Lock'",
                    f"tether:{node.name}",
                )[0][0]
                < 2
            ):
                assert time.monotonic() < deadline, "the two requests never reached the lock"
                time.sleep(0.05)  # polling PostgreSQL's own view
            status, body, _ = http("GET", node.url + "/api/me/", headers=auth, timeout=10)
            assert status == 503, body
            assert body["error"] == "unavailable", body
            assert node_connections(production_stack, node) <= 2
            lock.rollback()  # releases the lock: the stuck requests finish
            stuck = [f.result(timeout=20)[0] for f in futures]
    finally:
        lock.close()
    assert stuck == [200, 200]
    status, body, _ = http("GET", node.url + "/api/me/", headers=auth)
    assert status == 200, body
    status, text, _ = http("GET", node.url + "/metrics")
    assert "tether_db_pool_timeouts_total 1.0" in text, text
