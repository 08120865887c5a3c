"""The soak, short (`bench/soak.py` runs it for minutes): two nodes on PostgreSQL and
Redis under REST churn, chat sockets that reconnect, topic subscribers and operators.

Every figure a node holds (database connections, Redis sockets, RSS, file
descriptors, threads, tasks, the hub's queue, the runtime's state) stays within
its margin from the first half to the second; database connections never exceed
DB_POOL_SIZE and go back down after the load; nothing acknowledged is lost or
delivered twice; no request fails.
"""

from __future__ import annotations

import pytest

from bench.soak import parser, report, run_soak


@pytest.mark.timeout(420)
def test_two_nodes_under_mixed_load_hold_every_resource_flat(
    postgres_service, redis_service
) -> None:
    args = parser().parse_args(
        [
            "--seconds", "60",
            "--sample-every", "2",
            "--session", "10",
            "--chat-sockets", "20",
            "--subscribers", "10",
            "--quiet-wait", "45",
            "--database-url", postgres_service.url,
            "--redis-url", redis_service.url,
        ]
    )  # fmt: skip
    result = run_soak(args, log=print)
    print(report(result))
    assert result["messages"]["acknowledged"] > 100, report(result)
    assert result["ok"], report(result)
