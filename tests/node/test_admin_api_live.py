"""Staff APIs: effective configuration and live connections, across two nodes."""

from __future__ import annotations

import pytest

from tests.support.live import DaphneNode, http
from tests.support.names import unique
from tests.support.wsclient import WsClient


def staff_token(node: DaphneNode) -> str:
    return node.staff_token(unique("ops"))


def api(node: DaphneNode, token: str, method: str, path: str) -> tuple[int, object]:
    status, body, _ = http(method, node.url + path, headers={"Authorization": f"Bearer {token}"})
    return status, body


@pytest.mark.parametrize(
    "path", ["/api/admin/config/", "/api/admin/connections/", "/api/admin/connections/cleanup/"]
)
def test_staff_only(node: DaphneNode, path: str) -> None:
    method = "POST" if path.endswith("cleanup/") else "GET"
    assert http(method, node.url + path)[0] == 401
    status, body = api(node, node.register(unique()), method, path)
    assert status == 403 and body["error"] == "forbidden"


def test_config_shows_every_setting_with_its_source_and_redacts_secrets(stack, make_node) -> None:
    node = make_node(stack, HEARTBEAT_INTERVAL="7")
    status, body = api(node, staff_token(node), "GET", "/api/admin/config/")
    assert status == 200
    rows = {row["name"]: row for row in body["settings"]}
    assert rows["HEARTBEAT_INTERVAL"]["value"] == 7
    assert rows["HEARTBEAT_INTERVAL"]["source"] == "environment"
    assert rows["MAX_CONNECTIONS"] == {
        **rows["MAX_CONNECTIONS"],
        "value": 10000,
        "source": "default",
    }
    assert rows["NODE_NAME"]["value"] == node.name
    assert rows["SECRET_KEY"]["value"] == "***"
    assert "tests-only-secret" not in str(body)


async def test_list_filter_kick_and_cleanup_across_nodes(two_nodes) -> None:
    a, b = two_nodes
    token = staff_token(a)
    user = unique("watched")
    user_token = a.register(user)
    on_a = await WsClient.open(f"{a.ws_url}/ws/chat/", token=user_token)
    on_b = await WsClient.open(f"{b.ws_url}/ws/stream/", token=user_token)
    id_a = (await on_a.welcome())["connection_id"]
    id_b = (await on_b.welcome())["connection_id"]
    status, body = api(a, token, "GET", f"/api/admin/connections/?user={user}")
    assert status == 200
    listed = {c["id"]: c for c in body["connections"]}
    assert set(listed) == {id_a, id_b}
    assert listed[id_b]["node"] == "node-b" and listed[id_b]["endpoint"] == "stream"
    assert listed[id_a]["user"]["username"] == user and listed[id_a]["idle_seconds"] >= 0
    status, body = api(a, token, "GET", f"/api/admin/connections/?user={user.upper()}")
    assert {c["id"] for c in body["connections"]} == {id_a, id_b}  # names: any case
    status, body = api(a, token, "GET", f"/api/admin/connections/?user={user}&node=node-b")
    assert [c["id"] for c in body["connections"]] == [id_b]
    status, body = api(a, token, "GET", f"/api/admin/connections/?user={user}&idle_gt=3600")
    assert body["connections"] == []
    # Integers are integers, as the schema says (`offset=0.5` was rounded, `limit=0`
    # meant the default).
    for bad in ("idle_gt=soon", "offset=0.5", "limit=0", "limit=2.0", "offset=-1"):
        status, body = api(a, token, "GET", f"/api/admin/connections/?{bad}")
        assert status == 400 and body["error"] == "bad_request", bad
    # kick the socket on node b through node a's API
    status, _ = api(a, token, "DELETE", f"/api/admin/connections/{id_b}/")
    assert status == 204
    assert await on_b.close_code() == 4403
    status, body = api(a, token, "DELETE", "/api/admin/connections/c_nope/")
    assert status == 404 and body["error"] == "not_found"
    # a record no node holds (its socket long gone) is removed by cleanup
    a.stack.sql(
        "INSERT INTO realtime_liveconnection (id, node_id, user_id, endpoint, channel_name, "
        "remote_addr, user_agent, auth_method, auth_ref, connected_at, last_seen, subscriptions) "
        "SELECT 'c_orphan', node_id, user_id, endpoint, channel_name, remote_addr, user_agent, "
        "auth_method, auth_ref, connected_at, last_seen - interval '1 hour', subscriptions "
        "FROM realtime_liveconnection WHERE id = %s",
        id_a,
    )
    status, body = api(a, token, "POST", "/api/admin/connections/cleanup/")
    assert status == 200 and body["removed"] == 1
    status, body = api(a, token, "GET", f"/api/admin/connections/?user={user}")
    assert [c["id"] for c in body["connections"]] == [id_a]
    await on_a.close()
