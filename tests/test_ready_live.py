"""GET /health/ and /ready/ against live nodes, healthy and with a dependency down."""

from __future__ import annotations

from tests.live import DaphneNode, Stack, http
from tests.services import free_port


def test_health_and_ready_when_everything_answers(node: DaphneNode) -> None:
    status, body, headers = http("GET", node.url + "/health/")
    assert status == 200 and body["status"] == "ok" and body["node"] == node.name
    status, body, headers = http("GET", node.url + "/ready/")
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "channel_layer": "ok"}
    assert headers["Content-Type"].startswith("application/json")


def test_ready_names_the_channel_layer_when_redis_is_down(production_stack, make_node) -> None:
    dead = Stack("production", production_stack.database_url, f"redis://127.0.0.1:{free_port()}/0")
    dead.migrated = True
    node = make_node(dead)
    status, body, _ = http("GET", node.url + "/ready/", timeout=15)
    assert status == 503, body
    assert body["failed"] == ["channel_layer"] and body["checks"]["database"] == "ok"
    assert http("GET", node.url + "/health/")[0] == 200


def test_ready_names_the_database_when_postgres_is_down(production_stack, make_node) -> None:
    dead = Stack(
        "production",
        f"postgresql://postgres@127.0.0.1:{free_port()}/tether",
        production_stack.redis_url,
    )
    dead.migrated = True
    node = make_node(dead)
    status, body, _ = http("GET", node.url + "/ready/", timeout=15)
    assert status == 503, body
    assert body["failed"] == ["database"] and body["checks"]["channel_layer"] == "ok"
    assert http("GET", node.url + "/health/")[0] == 200
