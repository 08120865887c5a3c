"""Publisher process of `bench/feeds_bench.py`, run with the node's environment.

    plain:  channel_layer.group_send("bench-feed", {"type": "bench.pub", "text": …})
    tether: await realtime.topics.apublish("prices:bench", {"i": n, "t": time_ns})

At a fixed rate (`--rate`, publications/s, on an absolute schedule), or closed
loop (`--rate 0`): as fast as it can while at most `--window` publications are
ahead of the slowest subscriber, whose count the load generators send over UDP.
Prints `BENCH {"ready": …}`, waits for a start time on stdin, publishes for
`--seconds`, then prints `BENCH {"published": …}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAIN_GROUP = "bench-feed"
TOPIC = "prices:bench"


def say(obj: dict[str, Any]) -> None:
    print("BENCH " + json.dumps(obj), flush=True)


async def run(args: argparse.Namespace) -> None:
    if args.target == "plain":
        from channels.layers import get_channel_layer

        layer = get_channel_layer()

        async def publish(n: int) -> dict[str, Any] | None:
            text = json.dumps({"type": "pub", "i": n, "t": time.time_ns()}, separators=(",", ":"))
            await layer.group_send(PLAIN_GROUP, {"type": "bench.pub", "text": text})
            return None

        await layer.group_send("bench-warmup", {"type": "bench.pub", "text": "{}"})
    else:
        from realtime.topics import apublish

        async def publish(n: int) -> dict[str, Any] | None:
            return await apublish(TOPIC, {"i": n, "t": time.time_ns()})

        await apublish("prices:bench-warmup", {"i": -1, "t": 0})

    loop = asyncio.get_running_loop()
    slowest: dict[str, int] = {}
    news = asyncio.Event()
    feedback_port = 0
    if args.rate == 0:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        feedback_port = sock.getsockname()[1]

        def on_datagram() -> None:
            while True:
                try:
                    data = sock.recv(64)
                except BlockingIOError:
                    break
                wid, count = data.split()
                slowest[wid.decode()] = int(count)
            news.set()

        loop.add_reader(sock.fileno(), on_datagram)

    say({"ready": True, "feedback_port": feedback_port, "pid": os.getpid()})
    line = await asyncio.to_thread(sys.stdin.readline)
    start_at = json.loads(line)["start_at"]
    await asyncio.sleep(max(0.0, start_at - time.time()))

    cpu0 = time.process_time()
    t_start = time.time()
    end = t_start + args.seconds
    n = 0
    first = last = None
    call_ms: list[float] = []
    errors: dict[str, int] = {}
    stalled = 0.0
    while True:
        now = time.time()
        if now >= end:
            break
        if args.rate:
            due = t_start + n / args.rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
        elif len(slowest) < args.workers or n >= min(slowest.values()) + args.window:
            news.clear()
            t0 = time.time()
            try:
                await asyncio.wait_for(news.wait(), max(0.001, end - t0))
            except TimeoutError:
                pass
            stalled += time.time() - t0
            continue
        c0 = time.perf_counter()
        try:
            result = await publish(n)
        except Exception as exc:  # counted and shown: a publisher that fails measures nothing
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            continue
        call_ms.append((time.perf_counter() - c0) * 1000)
        n += 1
        if first is None:
            first = result
        last = result
    t_end = time.time()
    call_ms.sort()
    say(
        {
            "published": n,
            "first": first,
            "last": last,
            "t_start": t_start,
            "t_end": t_end,
            "cpu": time.process_time() - cpu0,
            "stalled": stalled,
            "call_p50_ms": call_ms[len(call_ms) // 2] if call_ms else None,
            "call_p99_ms": call_ms[int(len(call_ms) * 0.99)] if call_ms else None,
            "errors": errors,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=["plain", "tether"], required=True)
    parser.add_argument("--rate", type=float, default=20, help="publications/s; 0: closed loop")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="load generators reporting")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
