"""Slow consumers : a client that stops reading is closed with 4509,
while the other subscribers of the same feed get every publication."""

from __future__ import annotations

import asyncio
import time

from tests.support.live import live_ids, publish_many
from tests.support.names import unique
from tests.support.rawws import RawSocketClient
from tests.support.waiting import eventually
from tests.support.wsclient import WsClient


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        line = next(line for line in fh if line.startswith("VmRSS:"))
    return int(line.split()[1])


async def test_a_client_that_stops_reading_is_closed_4509_and_others_keep_up(
    embedded_stack, make_node
) -> None:
    node = make_node(embedded_stack, OUTBOUND_MAX_FRAMES="200", OUTBOUND_MAX_BYTES="262144")
    staff = node.staff_token(unique("ops"))
    topic = f"prices:{unique('S')}"
    token = node.register(unique())
    fast = await WsClient.open(f"{node.ws_url}/ws/stream/", token=token)
    await fast.welcome()
    await fast.send({"type": "subscribe", "id": "f", "topic": topic})
    await fast.expect("subscribed")
    before = live_ids(node)
    slow = RawSocketClient(node.port, "/ws/stream/", token)
    slow.send({"type": "subscribe", "id": "s", "topic": topic})
    await eventually(lambda: len(live_ids(node) - before) == 1)
    (slow_id,) = live_ids(node) - before
    rss_before = rss_kib(node.proc.pid)

    count, size = 3000, 16_000  # 48 MB through one topic
    publisher = asyncio.get_running_loop().run_in_executor(
        None, publish_many, node, staff, topic, count, size
    )
    offsets, lags = [], []
    pinged = time.monotonic()
    while len(offsets) < count:
        # As a client must (PROTOCOL 5), ping when it has sent nothing for a while:
        # on a slow machine the publishing outlasts the heartbeat timeout (60 s),
        # and a client that only receives is then closed with 4408.
        if time.monotonic() - pinged > 20:
            await fast.send({"type": "ping", "ts": 0})
            pinged = time.monotonic()
        frame = await fast.recv(30)
        if frame["type"] in ("ping", "pong"):
            continue
        assert frame["type"] == "pub", frame
        offsets.append(frame["offset"])
        lags.append(time.time() - frame["data"]["t"])
    await publisher
    assert offsets == list(range(1, count + 1))
    await eventually(lambda: slow_id not in live_ids(node), timeout=20)
    assert "code=4509 reason=slow_consumer" in node.log_text()
    growth_mib = (rss_kib(node.proc.pid) - rss_before) / 1024
    lags.sort()
    print(
        f"fast subscriber: p50 {lags[len(lags) // 2] * 1000:.0f} ms, "
        f"max {lags[-1] * 1000:.0f} ms; server RSS growth {growth_mib:.1f} MiB"
    )
    # Unbounded, the server would still hold the slow socket's 48 MB on top of what
    # serving 3,000 publications costs anyway (about 20 MiB here); bounded, it held
    # the kernel buffers plus OUTBOUND_MAX_BYTES until the close.
    assert growth_mib < count * size / 2**20, growth_mib
    slow.close()
    await fast.close()
