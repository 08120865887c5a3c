"""Metrics and the stats API, on two nodes."""

from __future__ import annotations

from tests.support.chat import expect_skipping, group, person, send
from tests.support.live import http
from tests.support.names import unique
from tests.support.topics import published, pubs, stream, subscribe
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient

FAST = {"HEARTBEAT_INTERVAL": "2", "PING_TIMEOUT": "4"}  # a maintenance pass a second


def scrape(node, token: str | None = None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, body, _ = http("GET", node.url + "/metrics", headers=headers)
    assert status == 200, body
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_metrics_count_what_happens(stack, make_node) -> None:
    node = make_node(stack, METRICS_TOKEN="scrape-me", **FAST)
    assert http("GET", node.url + "/metrics")[0] == 401
    assert http("GET", node.url + "/metrics", headers={"Authorization": "Bearer no"})[0] == 401
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    # Before any socket opens: `createsuperuser` blocks this loop for seconds on a
    # busy machine, longer than FAST's PING_TIMEOUT, and a socket that cannot
    # answer pings meanwhile is closed with 4408.
    staff = node.staff_token(unique("ops"))
    ws = await alice.socket(node)
    await send(ws, cid, "counted")
    await ws.send({"type": "nope"})
    await expect_skipping(ws, "error")
    client = await stream(node, bob.token)
    await subscribe(client, "prices:M", {"offset": 0, "epoch": "e-old"})
    published(node, staff, "prices:M", 1)
    await pubs(client, 1)
    await client.close()
    values = scrape(node, "scrape-me")
    assert values['tether_connections{endpoint="chat"}'] == 1
    assert values["tether_messages_stored_total"] >= 1
    assert values['tether_errors_total{code="unknown_type"}'] == 1
    assert values['tether_recoveries_total{recovered="false"}'] == 1
    assert values['tether_frames_in_total{type="send"}'] == 1
    assert values['tether_frames_out_total{type="pub"}'] >= 1
    assert values["tether_send_ack_seconds_count"] == 1
    assert values["tether_publish_deliver_seconds_count"] >= 1
    assert values['tether_connects_total{endpoint="stream"}'] == 1
    await eventually(
        lambda: (
            scrape(node, "scrape-me").get('tether_disconnects_total{code="1000",endpoint="stream"}')
            == 1
        )
    )
    assert any(name.startswith("django_http_requests") for name in values)  # django-prometheus
    assert "tether_event_loop_lag_seconds" in values and "tether_hub_queue_depth" in values
    await ws.close()


async def test_stats_name_every_live_node_with_diagnostics(production_stack, make_node) -> None:
    a = make_node(production_stack, "stats-a", **FAST)
    b = make_node(production_stack, "stats-b", **FAST)
    staff = a.staff_token(unique("ops"))
    alice = person(a)
    cid = group(a, alice)
    on_b = await alice.socket(b)
    user = await WsClient.open(f"{a.ws_url}/ws/stream/", token=alice.token)
    await user.welcome()
    await subscribe(user, "prices:S")
    assert (
        http("GET", a.url + "/api/stats/", headers={"Authorization": f"Bearer {alice.token}"})[0]
        == 403
    )

    def stats() -> dict:
        status, body, _ = http(
            "GET", a.url + "/api/stats/", headers={"Authorization": f"Bearer {staff}"}
        )
        assert status == 200, body
        return body

    for n in range(20):
        await send(on_b, cid, f"m{n}")

    def busy() -> dict | None:
        body = stats()
        by_name = {n["name"]: n for n in body["nodes"]}
        a_now, b_now = by_name.get("stats-a", {}), by_name.get("stats-b", {})
        # Figures refresh with each node's heartbeat (every second here).
        if a_now.get("subscriptions") == 1 and b_now.get("messages_per_s", 0) > 0:
            return body
        return None

    body = await eventually(busy, 10, "node a's subscription and node b's message rate")
    by_name = {n["name"]: n for n in body["nodes"]}
    assert {"stats-a", "stats-b"} <= set(by_name)
    for name in ("stats-a", "stats-b"):
        node = by_name[name]
        assert node["alive"] is True
        process = node["process"]
        assert process["rss_bytes"] > 10_000_000 and process["threads"] >= 1
        assert 0 < process["open_fds"] < process["fd_limit"]
        assert len(process["gc_counts"]) == 3 and process["event_loop_lag_ms"] >= 0
        # What the node holds (docs/deployment.md, "Connection budget").
        resources = node["resources"]
        assert 0 <= resources["db"]["in_use"] <= resources["db"]["max"] == 10
        assert resources["db"]["timeouts"] == 0 and resources["redis_cache"]["max"] == 8
        assert resources["runtime"]["asyncio_tasks"] > 0
    assert by_name["stats-a"]["resources"]["runtime"]["subscriptions"] == 1
    assert by_name["stats-a"]["subscriptions"] == 1
    assert by_name["stats-b"]["connections_by_endpoint"]["chat"] == 1
    assert body["totals"]["connections"] >= 2
    # A node gone silent (crashed) is not alive and not in the totals.
    production_stack.sql(
        "INSERT INTO realtime_node (name, host, pid, started_at, last_heartbeat, "
        "connection_count, stats) VALUES ('stats-ghost', 'h', 1, now(), "
        "now() - interval '1 hour', 0, '{}')"
    )
    body = stats()
    ghost = {n["name"]: n for n in body["nodes"]}.get("stats-ghost")
    assert ghost is None or ghost["alive"] is False  # None: a reaper already removed it
    # The totals count the live nodes only (an earlier test's killed node may still
    # look alive for PING_TIMEOUT + 10 s in the session's shared database).
    assert body["totals"]["nodes"] == sum(1 for n in body["nodes"] if n["alive"]) >= 2
    await user.close()
    await on_b.close()
