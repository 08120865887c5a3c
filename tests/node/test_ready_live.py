"""GET /health/ and /ready/ against live nodes, healthy and with a dependency down."""

from __future__ import annotations

import pytest

from tests.support.live import DaphneNode, Stack, http
from tests.support.services import free_port


def test_health_and_ready_when_everything_answers(node: DaphneNode) -> None:
    status, body, headers = http("GET", node.url + "/health/")
    assert status == 200 and body["status"] == "ok" and body["node"] == node.name
    status, body, headers = http("GET", node.url + "/ready/")
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}
    assert headers["Content-Type"].startswith("application/json")
    for path in ("/health/", "/ready/", "/metrics"):
        for method in ("POST", "DELETE", "OPTIONS"):
            status, body, headers = http(method, node.url + path)
            assert (status, body["error"], headers["Allow"]) == (
                405,
                "method_not_allowed",
                "GET, HEAD",
            ), (path, method)


@pytest.mark.parametrize("down", ["channel_layer", "database"])
def test_ready_names_what_is_down(production_stack, make_node, down: str) -> None:
    closed_port = free_port()
    database_url, redis_url = production_stack.database_url, production_stack.redis_url
    if down == "database":
        database_url = f"postgresql://postgres@127.0.0.1:{closed_port}/tether"
    else:
        redis_url = f"redis://127.0.0.1:{closed_port}/0"
    dead = Stack("production", database_url, redis_url, migrated=True)
    node = make_node(dead, METRICS_TOKEN="ops-only-token")
    status, body, _ = http("GET", node.url + "/ready/", timeout=15)
    assert status == 503, body
    assert body["failed"] == [down]
    assert all(state == "ok" for name, state in body["checks"].items() if name != down)
    # Anyone learns what failed; why (hosts, ports, driver messages) only operators.
    assert body["checks"][down] == "failed"
    operator = {"Authorization": "Bearer ops-only-token"}
    status, body, _ = http("GET", node.url + "/ready/", headers=operator, timeout=15)
    assert status == 503 and body["checks"][down] not in ("ok", "failed"), body
    assert str(closed_port) in body["checks"][down] or "Error" in body["checks"][down]
    assert http("GET", node.url + "/health/")[0] == 200
