"""Webhooks while the receiver is down: messages are stored, then the receiver comes back.

    .venv/bin/python bench/webhooks_bench.py --messages 50000

PostgreSQL + Redis, one daphne node with `WEBHOOK_URL` set to a receiver on
127.0.0.1 (tests/support/receiver.py: it verifies each signature) that refuses
connections while the messages are stored. Conversations of two members, both
with an open chat socket (so each message is one `conversation.event`, no
`notify.offline`). Then the receiver comes back while a lighter load keeps
sending. Prints send→ack latency in each phase, how long the receiver took to
get everything, and whether each conversation's events came once and in order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat_bench import percentile, seed  # noqa: E402
from bench.machine import process_cpu  # noqa: E402
from realtime.rest.quotas import all_off as quotas_off  # noqa: E402


async def open_socket(url: str, token: str) -> Any:
    from websockets.asyncio.client import connect

    ws = await connect(
        f"{url}/ws/chat/", additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    )
    assert json.loads(await ws.recv())["type"] == "welcome"
    return ws


class Sender:
    """One socket that sends into its conversation and times each ack."""

    def __init__(self, ws: Any, conversation: str) -> None:
        self.ws = ws
        self.conversation = conversation
        self.sent_at: dict[str, float] = {}
        self.acks: list[float] = []
        self.window = asyncio.Semaphore(8)
        self.idle = asyncio.Event()
        self.idle.set()
        self.n = 0
        self.reader = asyncio.ensure_future(self.read())

    async def read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):  # idle at the end: closed 4408
            await self._read()

    async def _read(self) -> None:
        async for text in self.ws:
            if '"type":"ack"' in text:
                frame = json.loads(text)
                started = self.sent_at.pop(frame["id"], None)
                if started is not None:
                    self.acks.append(time.perf_counter() - started)
                    self.window.release()
                    if not self.sent_at:
                        self.idle.set()

    async def send(self) -> None:
        await self.window.acquire()
        self.n += 1
        key = f"{self.conversation}-{self.n}"
        self.sent_at[key] = time.perf_counter()
        self.idle.clear()
        frame = {"type": "send", "id": key, "conversation": self.conversation, "body": "x"}
        await self.ws.send(json.dumps(frame))

    async def drained(self) -> None:
        await self.idle.wait()


async def drain(ws: Any) -> None:
    """Read a socket that only receives, answering the server's heartbeat (PROTOCOL 5)."""
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        async for text in ws:
            if '"type":"ping"' in text:
                await ws.send('{"type":"pong"}')


async def at_rate(senders: list[Sender], rate: float, until: Any) -> int:
    """Send `rate` messages a second in all, round robin, until `until()`."""
    sent = 0
    start = time.perf_counter()
    while not until():
        await senders[sent % len(senders)].send()
        sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    return sent


def serve(port: int, path: str) -> None:
    """The receiver in a process of its own (the load generator's GIL is busy enough):
    every request, as one JSON line in `path`, five times a second."""
    from tests.support.receiver import Receiver

    receiver = Receiver()
    receiver.port = port
    receiver.start()
    written = 0
    with open(path, "a") as out:
        while True:
            time.sleep(0.2)
            new = receiver.requests[written:]
            for r in new:
                data = r.event["data"]
                row = [r.event["id"], r.event["type"], data.get("conversation"), data.get("seq")]
                out.write(json.dumps([*row, r.answered, r.signed]) + "\n")
            written += len(new)
            out.flush()


class Received:
    """What the receiver process wrote: requests, and the messages' events (not the
    sockets' presence) deduplicated by id."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> tuple[list[list[Any]], list[list[Any]]]:
        with open(self.path) as lines:
            requests = [json.loads(line) for line in lines if line.endswith("\n")]
        seen: set[str] = set()
        events = []
        for r in requests:
            if 200 <= r[4] < 300 and r[1] == "conversation.event" and r[0] not in seen:
                seen.add(r[0])
                events.append(r)
        return requests, events

    def wait(self, enough: int, timeout: float) -> float:
        """Block until `enough` distinct events arrived; the time it took."""
        started = time.perf_counter()
        while len(self.read()[1]) < enough and time.perf_counter() - started < timeout:
            time.sleep(0.2)
        return time.perf_counter() - started


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f} ms"


async def run(args: argparse.Namespace) -> None:
    from tests.support.live import DaphneNode, Stack
    from tests.support.receiver import SECRET
    from tests.support.services import PostgresServer, RedisServer, free_port

    redis, postgres = RedisServer(), PostgresServer()
    stack = Stack("production", postgres.start(), redis.start())
    import multiprocessing as mp

    port = free_port()
    received = Received(tempfile.mkstemp(prefix="tether-hooks-")[1])
    receiver = mp.Process(target=serve, args=(port, received.path), daemon=True)
    settings = {
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        "HANDSHAKE_RATE_PER_SECOND": "1000000",
        "HANDSHAKE_BURST": "1000000",
        "OUTBOUND_MAX_FRAMES": "100000",
        "OUTBOUND_MAX_BYTES": "100000000",
        **quotas_off(),
        "WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_CONCURRENCY": str(args.concurrency),
    }
    if args.delivery_worker:
        settings["OUTBOX_DELIVERY"] = "worker"
    node = None
    worker = None
    try:
        stack.migrate()
        node = DaphneNode(stack, "bench-hooks", Path(tempfile.mkdtemp()), settings).start()
        if args.delivery_worker:
            import subprocess

            worker = subprocess.Popen(  # noqa: ASYNC220 - started once, not waited on here
                [sys.executable, "manage.py", "deliver_outbox", "--poll", "0.2"],
                cwd=ROOT,
                env=stack.env(**settings),
            )
        people = await asyncio.to_thread(seed, stack.database_url, args.conversations, 2)
        sockets = [await open_socket(node.ws_url, p["token"]) for p in people]
        senders = [
            Sender(ws, p["conversation"])
            for ws, p in zip(sockets, people, strict=True)
            if p["index"] % 2 == 0
        ]
        others = [asyncio.ensure_future(drain(ws)) for i, ws in enumerate(sockets) if i % 2]
        cpu_before = process_cpu(node.proc.pid)
        worker_before = process_cpu(worker.pid) if worker is not None else 0.0

        # 1. The receiver is down while the messages are stored.
        started = time.perf_counter()
        stored = 0
        while stored < args.messages:
            await asyncio.gather(*(s.send() for s in senders[: args.messages - stored]))
            stored += min(len(senders), args.messages - stored)
        await asyncio.gather(*(s.drained() for s in senders))
        down_for = time.perf_counter() - started
        down_acks = [a for s in senders for a in s.acks]
        for s in senders:
            s.acks.clear()
        pending = stack.sql("SELECT count(*) FROM realtime_outboxevent WHERE state = 'pending'")
        print(
            f"receiver down: {args.messages} messages stored in {down_for:.1f} s "
            f"({args.messages / down_for:.0f} msg/s), send->ack p50 {ms(down_acks, 50)} "
            f"p99 {ms(down_acks, 99)}; outbox pending {pending[0][0]}",
            flush=True,
        )

        # 2. The receiver is back; a lighter load goes on meanwhile.
        receiver.start()
        back = time.perf_counter()
        done = asyncio.Event()
        during = asyncio.ensure_future(at_rate(senders, args.drain_rate, done.is_set))
        first = await asyncio.to_thread(received.wait, 1, args.timeout)
        # Caught up with what was stored while it was down, then with what came since.
        await asyncio.to_thread(received.wait, args.messages, args.timeout)
        done.set()
        extra = await during
        await asyncio.gather(*(s.drained() for s in senders))
        total = sum(s.n for s in senders)
        await asyncio.to_thread(received.wait, total, args.timeout)
        caught_up = time.perf_counter() - back
        drain_acks = [a for s in senders for a in s.acks]
        cpu = process_cpu(node.proc.pid) - cpu_before
        worker_cpu = process_cpu(worker.pid) - worker_before if worker is not None else 0.0

        requests, events = received.read()
        by_conversation: dict[str, list[int]] = {}
        for _, _, conversation, seq, _, _ in events:
            by_conversation.setdefault(conversation, []).append(seq)
        in_order = sum(
            1 for seqs in by_conversation.values() if seqs == list(range(1, len(seqs) + 1))
        )
        answered = [r for r in requests if 200 <= r[4] < 300 and r[1] == "conversation.event"]
        print(
            f"receiver back: first delivery after {first:.1f} s; all {len(events)} of "
            f"{total} events after {caught_up:.1f} s "
            f"({len(events) / max(0.001, caught_up):.0f} events/s including the wait)"
        )
        print(
            f"meanwhile {extra} more sends at {args.drain_rate:.0f} msg/s: "
            f"send->ack p50 {ms(drain_acks, 50)} p99 {ms(drain_acks, 99)}"
        )
        print(
            f"conversations complete and in order: {in_order} of {len(by_conversation)}; "
            f"requests {len(requests)}, repeated {len(answered) - len(events)}, "
            f"unsigned {sum(1 for r in requests if not r[5])}"
        )
        print(f"node CPU seconds over both phases: {cpu:.1f}")
        if worker is not None:
            print(f"delivery worker CPU seconds over both phases: {worker_cpu:.1f}")
        for task in others:
            task.cancel()
        for ws in sockets:
            await ws.close()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        if receiver.is_alive():
            receiver.kill()
        if node is not None:
            node.stop()
        postgres.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--drain-rate", type=float, default=100, help="msg/s while catching up")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--concurrency", type=int, default=8, help="WEBHOOK_CONCURRENCY")
    parser.add_argument(
        "--delivery-worker",
        action="store_true",
        help="OUTBOX_DELIVERY=worker: a `manage.py deliver_outbox` process delivers, not the node",
    )
    args = parser.parse_args()
    os.environ.setdefault("SECRET_KEY", "bench-" + "x" * 50)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
