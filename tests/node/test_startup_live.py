"""Starting nodes on a fresh database: migrations applied once, logs as configured."""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg

from tests.support.live import DaphneNode, Stack, http
from tests.support.names import unique
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient


async def test_fresh_sqlite_is_migrated_at_start_and_json_logs(tmp_path, make_node) -> None:
    stack = Stack("embedded", f"sqlite:///{tmp_path}/fresh.sqlite3")
    stack.migrated = True  # do not pre-migrate: the node must do it
    node = make_node(stack, LOG_FORMAT="json")
    token = node.register(unique())
    assert (
        http("GET", node.url + "/api/me/", headers={"Authorization": f"Bearer {token}"})[0] == 200
    )
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=token)
    cid = (await client.welcome())["connection_id"]
    await client.close()
    # The server has handled the close once the record is gone; stopping earlier
    # would drain the socket with 1012 instead.
    await eventually(
        lambda: not stack.sql("SELECT id FROM realtime_liveconnection WHERE id = %s", cid)
    )
    http("GET", node.url + "/health/?ticket=tk_secret-value")
    await asyncio.to_thread(node.stop)
    lines = [line for line in node.log_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = " ".join(r["message"] for r in records)
    assert "applying" in messages and "pending migrations" in messages
    assert any(r["logger"] == "tether.access" for r in records)
    assert "tk_secret-value" not in node.log_text()
    events = {r.get("event"): r for r in records if r.get("connection_id") == cid}
    assert events["connect"]["endpoint"] == "chat"
    assert events["disconnect"]["close_code"] == 1000
    assert events["disconnect"]["duration_s"] >= 0


def test_two_nodes_starting_at_once_on_a_fresh_postgres(production_stack, tmp_path) -> None:
    name = f"tether_fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(production_stack.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = production_stack.database_url.rsplit("/", 1)[0]
    stack = Stack("production", f"{base}/{name}", production_stack.redis_url)
    stack.migrated = True
    nodes = [DaphneNode(stack, f"fresh-{i}", tmp_path) for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.start(timeout=60), nodes))
        for node in nodes:
            assert http("GET", node.url + "/ready/")[0] == 200, node.log_tail()
        nodes[1].register(unique())
        applied = stack.sql("SELECT count(*) FROM django_migrations WHERE app = 'realtime'")
        assert applied[0][0] >= 1
    finally:
        for node in nodes:
            node.stop()
        with psycopg.connect(production_stack.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
