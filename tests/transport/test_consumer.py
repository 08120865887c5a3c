"""Focused consumer tests with WebsocketCommunicator: framing, errors, heartbeat, cleanup."""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from accounts import credentials
from accounts.models import User
from monitoring import metrics
from project.asgi import application
from realtime.models import LiveConnection
from realtime.node import connection, control
from realtime.node import runtime as node_runtime
from realtime.protocol import Close
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def make_token(username: str = "alice", active: bool = True) -> str:
    user = User.objects.create_user(username=username, password="pw-Not-common-123")
    if not active:
        user.is_active = False
        user.save()
    return credentials.issue_token(user)[1]


def communicator(path: str = "/ws/chat/", token: str | None = None, **kw: Any):
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    headers += kw.get("headers", [])
    return WebsocketCommunicator(application, path, headers=headers)


async def connected(runtime, path: str = "/ws/chat/") -> tuple[WebsocketCommunicator, dict]:
    token = await make_token()
    comm = communicator(path, token)
    ok, _ = await comm.connect()
    assert ok
    welcome = await comm.receive_json_from()
    return comm, welcome


async def no_records() -> bool:
    return await database_sync_to_async(LiveConnection.objects.count)() == 0


async def close_code(comm: WebsocketCommunicator, timeout: float = 3) -> int:
    while True:
        out = await comm.receive_output(timeout)
        if out["type"] == "websocket.close":
            return out.get("code", 1000)


@pytest.mark.parametrize("path", ["/ws/chat/", "/ws/stream/"])
async def test_welcome_has_every_field(runtime, settings, path: str) -> None:
    settings.NODE_NAME = "node-x"
    comm, welcome = await connected(runtime, path)
    assert welcome["type"] == "welcome"
    assert welcome["protocol"] == 1
    assert welcome["connection_id"].startswith("c_")
    assert welcome["node"] == runtime.name
    assert welcome["user"] == {"id": welcome["user"]["id"], "username": "alice"}
    assert welcome["heartbeat"] == {"interval": 25, "timeout": 60}
    assert welcome["limits"] == {
        "max_frame_bytes": 65536,
        "max_body_chars": 4000,
        "max_subscriptions": 100,
        "rate": {"per_second": 20, "burst": 40},
    }
    assert abs(welcome["server_time"] - time.time() * 1000) < 5000
    assert welcome["expires_at"] is None  # an API token does not expire (PROTOCOL 11)
    assert await database_sync_to_async(LiveConnection.objects.count)() == 1
    await comm.disconnect()


async def test_missing_credentials_close_4401(runtime) -> None:
    comm = communicator()
    ok, _ = await comm.connect()
    assert ok  # accepted, then closed: a browser can tell "log in again"
    assert await close_code(comm) == Close.UNAUTHENTICATED


async def test_invalid_token_close_4401(runtime) -> None:
    refused = metrics.DISCONNECTS.labels("chat", "4401")
    before = refused._value.get()
    comm = communicator(token="tt_not-a-real-token")
    await comm.connect()
    assert await close_code(comm) == Close.UNAUTHENTICATED
    # Counted: the alert on failed logins (tether_disconnects_total{code="4401"}).
    assert refused._value.get() == before + 1


async def test_disabled_account_close_4403(runtime) -> None:
    comm = communicator(token=await make_token("carol", active=False))
    await comm.connect()
    assert await close_code(comm) == Close.FORBIDDEN


async def test_ping_pong_echoes_ts_and_reports_load(runtime) -> None:
    comm, _ = await connected(runtime)
    await comm.send_json_to({"type": "ping", "ts": 1732300000000, "id": "p1"})
    pong = await comm.receive_json_from()
    assert pong["type"] == "pong" and pong["ts"] == 1732300000000 and pong["id"] == "p1"
    assert 0 <= pong["load"] <= 1 and isinstance(pong["server_time"], int)
    await comm.disconnect()


async def test_errors_keep_the_socket_open(runtime) -> None:
    comm, _ = await connected(runtime)
    await comm.send_to(text_data="not json")
    assert (await comm.receive_json_from())["code"] == "bad_json"
    await comm.send_json_to({"type": "teleport", "id": "t1"})
    err = await comm.receive_json_from()
    assert err == {**err, "type": "error", "id": "t1", "code": "unknown_type"}
    await comm.send_json_to({"id": "t2"})
    err = await comm.receive_json_from()
    assert err["code"] == "bad_request" and err["id"] == "t2" and "type" in err["message"]
    await comm.send_json_to({"type": "ping", "id": ""})
    err = await comm.receive_json_from()
    assert err["code"] == "bad_request" and err["message"].startswith("id:")
    await comm.send_json_to({"type": "ping", "ts": "soon", "id": "p"})
    err = await comm.receive_json_from()
    assert err["code"] == "bad_request" and err["message"].startswith("ts:") and err["id"] == "p"
    await comm.send_json_to({"type": "ping", "ts": 1, "whatever": {"x": 1}})
    assert (await comm.receive_json_from())["type"] == "pong"
    await comm.disconnect()


async def test_binary_frame_gets_an_error_then_4400(runtime) -> None:
    comm, _ = await connected(runtime)
    await comm.send_to(bytes_data=b"\x00\x01")
    err = await comm.receive_json_from()
    assert err["type"] == "error" and err["code"] == "bad_json"
    await comm.send_to(bytes_data=b"\x00\x01")
    assert await close_code(comm) == Close.PROTOCOL_VIOLATION


async def test_a_stream_of_bad_json_closes_4400(runtime) -> None:
    comm, _ = await connected(runtime)
    for _ in range(9):
        await comm.send_to(text_data="{oops")
        assert (await comm.receive_json_from())["code"] == "bad_json"
    await comm.send_to(text_data="{oops")
    assert await close_code(comm) == Close.PROTOCOL_VIOLATION


async def test_frame_of_exactly_the_limit_passes_one_more_byte_closes_1009(
    runtime, settings
) -> None:
    settings.MAX_FRAME_BYTES = 1000
    comm, _ = await connected(runtime)
    prefix, suffix = '{"type":"ping","pad":"', '"}'
    room = 1000 - len(prefix) - len(suffix)
    exact = prefix + "é" * (room // 2) + "a" * (room % 2) + suffix  # é is 2 bytes
    assert len(exact.encode()) == 1000
    await comm.send_to(text_data=exact)
    assert (await comm.receive_json_from())["type"] == "pong"
    await comm.send_to(text_data=exact[:-2] + "a" + exact[-2:])
    assert await close_code(comm) == Close.TOO_BIG


async def test_rate_limit_answers_rate_limited_and_skips_the_frame(runtime, settings) -> None:
    settings.RATE_LIMIT_PER_SECOND = 1
    settings.RATE_LIMIT_BURST = 2
    comm, _ = await connected(runtime)
    for i in range(2):
        await comm.send_json_to({"type": "nothing", "id": f"n{i}"})
        assert (await comm.receive_json_from())["code"] == "unknown_type"
    await comm.send_json_to({"type": "nothing", "id": "n2"})
    err = await comm.receive_json_from()
    assert err["code"] == "rate_limited" and err["id"] == "n2" and err["retry_after"] > 0
    assert "1 frames per second, burst 2" in err["message"]
    await comm.send_json_to({"type": "ping", "ts": 5})  # heartbeats: outside the rate limit
    assert (await comm.receive_json_from())["type"] == "pong"
    await comm.disconnect()


async def test_sweeper_pings_quiet_sockets_and_closes_silent_ones_4408(runtime) -> None:
    comm, _ = await connected(runtime)
    conn = next(iter(runtime.connections.values()))
    now = time.monotonic()
    await runtime.sweep(now + 25.5)  # nothing sent for HEARTBEAT_INTERVAL
    ping = await comm.receive_json_from()
    assert ping["type"] == "ping" and isinstance(ping["server_time"], int)
    await comm.send_json_to({"type": "pong"})
    await comm.receive_nothing(0.05)
    assert conn.last_in >= now
    await runtime.sweep(conn.last_in + 60.5)  # nothing heard for PING_TIMEOUT
    assert await close_code(comm) == Close.HEARTBEAT_TIMEOUT
    assert runtime.connections == {}
    await eventually(no_records, what="the record removed")


async def test_disconnect_removes_the_record(runtime) -> None:
    comm, _ = await connected(runtime)
    assert await database_sync_to_async(LiveConnection.objects.count)() == 1
    await comm.disconnect()
    assert await database_sync_to_async(LiveConnection.objects.count)() == 0
    assert runtime.connections == {}


def _closes(code: str) -> float:
    return metrics.DISCONNECTS.labels("chat", code)._value.get()


async def test_a_clients_own_close_code_is_no_new_metric_label(runtime) -> None:
    before_other, before_normal = _closes("other"), _closes("1000")
    token = await make_token()
    for code in (3999, 4999, 1000):
        comm = communicator("/ws/chat/", token)
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from())["type"] == "welcome"
        await comm.disconnect(code=code)
    assert _closes("other") == before_other + 2 and _closes("1000") == before_normal + 1
    sampled = {s.labels["code"] for s in metrics.DISCONNECTS.collect()[0].samples}
    assert not {"3999", "4999"} & sampled


async def test_control_message_closes_with_its_code(runtime) -> None:
    comm, _ = await connected(runtime)
    record = await database_sync_to_async(LiveConnection.objects.get)()
    assert record.channel_name == runtime.hub.control_channel  # the node's, not one per socket
    await control.send_control(
        [(record.channel_name, record.id)], {"type": "tether.close", "code": 4403}
    )
    assert await close_code(comm) == Close.FORBIDDEN
    await eventually(no_records, what="the record removed")


async def test_node_connection_limit_4503(runtime, settings) -> None:
    settings.MAX_CONNECTIONS = 1
    # The stream endpoint: a chat socket's presence write would race the second
    # handshake's token stamp on the test's in-memory SQLite ("table is locked").
    comm, _ = await connected(runtime, "/ws/stream/")
    other = communicator("/ws/stream/", token=await make_token("bob"))
    await other.connect()
    assert await close_code(other) == Close.OVER_CAPACITY
    await comm.disconnect()


async def test_per_user_connection_limit_4503(runtime, settings) -> None:
    settings.MAX_CONNECTIONS_PER_USER = 1
    token = await make_token()
    first = communicator(token=token)
    await first.connect()
    await first.receive_json_from()
    second = communicator(token=token)
    await second.connect()
    assert await close_code(second) == Close.OVER_CAPACITY
    await first.disconnect()


def strict_json(name: str) -> None:
    raise AssertionError(f"{name} in a server frame")


NASTY_FRAMES = [
    "",
    " ",
    "{}",
    '{"type": null}',
    '{"type": ""}',
    '{"type": "' + "p" * 10000 + '"}',
    '{"type": ["ping"]}',
    '{"type": "ping", "ts": 1e309}',
    '{"type": "ping", "ts": NaN}',
    '{"type": "ping", "ts": -Infinity}',
    '{"type": "ping", "ts": 123456789012345678901234567890}',
    '{"type": "ping", "ts": true}',
    '{"type": "ping", "id": null}',
    '{"type": "ping", "id": {"a": 1}}',
    '{"type": "ping", "id": "\\ud800"}',
    '{"type": "\\u0000"}',
    '{"type": "__init__"}',
    '{"type": "connect"}',
    '{"type": "websocket.disconnect"}',
    '{"type": "tether.close", "code": 1000}',
    '{"type": "ping"' + ', "x": 1' * 2000 + "}",
    '{"a": ' * 5000 + "1" + "}" * 5000,
]


async def test_nothing_a_client_sends_crashes_the_consumer(
    runtime, settings, caplog, monkeypatch
) -> None:
    settings.RATE_LIMIT_BURST = 1000
    monkeypatch.setattr(connection, "HEARTBEAT_BURST", 1000)  # a ping after every frame
    comm, _ = await connected(runtime)
    for text in NASTY_FRAMES:
        await comm.send_input({"type": "websocket.receive", "text": text})
        raw = (await comm.receive_output())["text"]
        reply = json.loads(raw, parse_constant=strict_json)  # the reply is strict JSON
        assert reply["type"] in ("error", "pong"), (text[:40], reply)
        if reply["type"] == "error":
            assert reply["code"] in ("bad_json", "bad_request", "unknown_type"), reply
            assert "Traceback" not in reply["message"]
        await comm.send_json_to({"type": "ping", "ts": 1})  # still alive and well
        assert (await comm.receive_json_from())["type"] == "pong"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    await comm.disconnect()


async def test_presence_of_ids_no_user_can_have_is_offline(runtime) -> None:
    comm, _ = await connected(runtime)
    users = [2**70, -(2**70), 2**63 - 1, 0]
    await comm.send_json_to({"type": "presence.query", "id": "p", "users": users})
    reply = await comm.receive_json_from()
    assert reply == {"type": "result", "id": "p", "data": dict.fromkeys(map(str, users), "offline")}
    await comm.disconnect()


async def test_a_flood_is_closed_4429_after_ten_seconds(runtime, settings, monkeypatch) -> None:
    settings.RATE_LIMIT_PER_SECOND = 5
    settings.RATE_LIMIT_BURST = 5
    clock = [1000.0]
    monkeypatch.setattr("realtime.transport.consumer.time.monotonic", lambda: clock[0])
    comm, _ = await connected(runtime)
    codes = []
    closed = None
    for _ in range(12 * 20):  # 20 frames a second for 12 s: four times the rate
        clock[0] += 0.05
        await comm.send_json_to({"type": "nothing"})
        out = await comm.receive_output(3)
        if out["type"] == "websocket.close":
            closed = out["code"]
            break
        codes.append(json.loads(out["text"])["code"])
    assert closed == Close.FLOODING
    assert "rate_limited" in codes and "unknown_type" in codes  # some got through meanwhile
    assert 9.5 <= clock[0] - 1000.0 <= 11


async def test_malformed_frames_are_rate_limited_too(runtime, settings) -> None:
    settings.RATE_LIMIT_PER_SECOND = 1
    settings.RATE_LIMIT_BURST = 2
    comm, _ = await connected(runtime)
    replies = []
    for _ in range(4):
        await comm.send_json_to({"id": 5})
        replies.append((await comm.receive_json_from())["code"])
    assert replies[:2] == ["bad_request", "bad_request"]
    assert set(replies[2:]) == {"rate_limited"}
    await comm.disconnect()


async def test_the_hub_joins_a_conversation_group_once_per_node(runtime) -> None:
    from realtime.chat import conversations

    token = await make_token()
    user = await User.objects.aget(username="alice")
    conversation = await database_sync_to_async(conversations.check_create_group)(user, "room", [])
    sockets = []
    for _ in range(3):
        comm = communicator(token=token)
        await comm.connect()
        await comm.receive_json_from()
        sockets.append(comm)
    key = f"conv.{conversation.id}"
    await eventually(lambda: len(runtime.hub.members(key)) == 3, what="3 local subscribers")
    assert list(get_channel_layer("hub").groups[key]) == [runtime.hub.channel]  # not one per socket
    for comm in sockets:
        await comm.disconnect()
    await eventually(lambda: key not in get_channel_layer("hub").groups, what="the hub to leave")


async def test_a_started_node_runs_full_collections_less_often(runtime) -> None:
    """A reconnect storm grows the heap; the node tunes the collector once it starts."""
    comm, _ = await connected(runtime)
    assert gc.get_threshold()[2] == node_runtime.FULL_COLLECTION_EVERY
    assert gc.get_freeze_count() > 0  # start-up's heap is out of the collector's reach
    await comm.disconnect()
