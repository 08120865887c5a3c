"""Load generator of `bench/feeds_bench.py`: many WebSocket subscribers per process.

A raw `asyncio.Protocol` client, cheap enough not to be the bottleneck: it does
the HTTP upgrade itself, masks the few frames it sends (RFC 6455 5.3) and
parses server frames minimally (header, length, payload; servers do not mask).
Every text frame of every subscriber is counted; only the sampled subscribers
decode JSON (publish→receive latency from the publisher's `t`, order and
duplicates from `offset` for Tether or `i` for the plain consumer).

Each worker process is driven by its parent over a `multiprocessing` pipe:

    ("connect", params) -> ("connected", stats)   open sockets, bounded concurrency
    ("measure", port)   -> ("measuring", None)    reset counters; with a port, report
                                                  the slowest subscriber's count to the
                                                  publisher over UDP (closed loop)
    ("drain", n, quiet, limit) -> ("result", stats)  wait until every subscriber has n
                                                  frames (or quiet for `quiet` s)
    ("close", None)     -> ("closed", count)
    ("exit", None)      -> ends the process
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import resource
import socket
import time
from collections import Counter
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MARKER = b'"pub"'  # a live publication frame, on both targets


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame, masked as RFC 6455 requires."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if not n:
        return head + key
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Subscriber(asyncio.Protocol):
    """One socket. `ready` resolves when it is open (and subscribed, for Tether)."""

    def __init__(self, gen: SubscriberPool, sampled: bool, token: str) -> None:
        self.gen = gen
        self.sampled = sampled
        self.token = token
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.handshaken = False
        self.live = False
        self.ready: asyncio.Future = gen.loop.create_future()
        self.key = base64.b64encode(os.urandom(16))
        self.count = 0
        self.close_code: int | None = None
        self.lost = False
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.seen: set[int] = set()

    # --- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        gen = self.gen
        request = (
            f"GET {gen.path} HTTP/1.1\r\n"
            f"Host: {gen.host}:{gen.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {self.token}\r\n"
            "\r\n"
        ).encode()
        transport.write(request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.live = False
        if not self.ready.done():
            code = self.close_code
            self.ready.set_exception(ConnectionError(f"closed before ready (code {code})"))
        elif not self.gen.closing:
            self.gen.dropped[str(self.close_code)] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not self._check_handshake(head):
                return
        now = time.time_ns()
        n = len(buf)
        pos = 0
        gen = self.gen
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1:
                if self.live and buf.find(MARKER, start, end) >= 0:
                    self.count += 1
                    gen.received += 1
                    if self.sampled:
                        self._sample(bytes(buf[start:end]), now)
                else:
                    self._control_text(bytes(buf[start:end]))
                if not b0 & 0x80:
                    gen.other["fragmented"] += 1
            elif opcode == 0x8:
                if length >= 2:
                    self.close_code = int.from_bytes(buf[start : start + 2], "big")
                if self.transport is not None:
                    self.transport.write(client_frame(bytes(buf[start : start + 2]), 0x8))
                    self.transport.close()
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(client_frame(bytes(buf[start:end]), 0xA))
            elif opcode != 0xA:
                gen.other[f"opcode {opcode}"] += 1
            pos = end
        if pos:
            del buf[:pos]
        if self.live:
            gen.last_ns = now
            if not gen.first_ns:
                gen.first_ns = now

    # --- helpers -----------------------------------------------------------

    def _check_handshake(self, head: bytes) -> bool:
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 101"):
            self._fail(f"handshake: {status.decode(errors='replace')}")
            return False
        expected = base64.b64encode(hashlib.sha1(self.key + GUID).digest())
        if expected not in head:
            self._fail("handshake: bad Sec-WebSocket-Accept")
            return False
        self.handshaken = True
        if self.gen.kind == "plain":  # the plain consumer says nothing: open is ready
            self._ready()
        return True

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def _ready(self) -> None:
        self.live = True
        if not self.ready.done():
            self.ready.set_result(None)

    def _control_text(self, payload: bytes) -> None:
        """A frame that is not a publication: welcome, subscribed, ping, error…"""
        gen = self.gen
        try:
            frame = json.loads(payload)
            kind = frame.get("type")
        except ValueError:
            gen.other["bad json"] += 1
            return
        if kind == "welcome" and not self.live:
            if gen.subscribe:
                self.send({"type": "subscribe", "id": "s", "topic": gen.topic})
            else:
                self._ready()
        elif kind == "subscribed" and not self.live:
            self._ready()
        elif kind == "ping":
            self.send({"type": "pong"})
            gen.other["ping"] += 1
        elif kind == "error":
            code = frame.get("code")
            gen.other[f"error {code}"] += 1
            self._fail(f"error {code}: {frame.get('message', '')}")
        else:
            gen.other[str(kind)] += 1

    def _sample(self, payload: bytes, now: int) -> None:
        gen = self.gen
        try:
            frame = json.loads(payload)
            if gen.kind == "plain":
                sent, seq = frame["t"], frame["i"]
            else:
                sent, seq = frame["data"]["t"], frame["offset"]
        except (ValueError, KeyError, TypeError):
            gen.other["unreadable pub"] += 1
            return
        gen.latencies.append((now - sent) / 1e6)
        if self.last_seq is None:
            self.first_seq = seq
        elif seq in self.seen:
            gen.duplicates += 1
            return
        elif seq < self.last_seq:
            gen.reorders += 1
        elif seq > self.last_seq + 1:
            gen.gaps += seq - self.last_seq - 1
        self.seen.add(seq)
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq

    def send(self, frame: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(json.dumps(frame).encode()))


class SubscriberPool:
    """The subscribers of one worker process and their counters."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.subs: list[Subscriber] = []
        self.closing = False
        self.host, self.port, self.path = "127.0.0.1", 0, "/"
        self.kind, self.topic, self.subscribe = "plain", "", False
        self.feedback: asyncio.Task | None = None
        self.reset()

    def reset(self) -> None:
        self.received = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latencies: list[float] = []
        self.duplicates = self.reorders = self.gaps = 0
        self.other: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        for sub in self.subs:
            sub.reset()
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()

    async def connect(self, p: dict[str, Any]) -> dict[str, Any]:
        self.closing = False
        self.host, self.port, self.path = p["host"], p["port"], p["path"]
        tokens = p["tokens"]
        self.kind, self.topic, self.subscribe = p["kind"], p.get("topic", ""), p["subscribe"]
        gate = asyncio.Semaphore(p["inflight"])
        failures: Counter[str] = Counter()
        cpu0, t0 = time.process_time(), time.time()

        async def one(i: int, sampled: bool) -> None:
            async with gate:
                sub = Subscriber(self, sampled, tokens[(p["first"] + i) % len(tokens)])
                try:
                    await self.loop.create_connection(lambda: sub, self.host, self.port)
                    await asyncio.wait_for(sub.ready, p.get("timeout", 60))
                except (TimeoutError, OSError) as exc:
                    failures[str(exc) or type(exc).__name__] += 1
                    if sub.transport is not None:
                        sub.transport.close()
                    return
                self.subs.append(sub)

        count, sample = p["count"], p.get("sample", 0)
        await asyncio.gather(*(one(i, i < sample) for i in range(count)))
        return {
            "ok": len(self.subs),
            "failed": dict(failures),
            "t0": t0,
            "t1": time.time(),
            "cpu": time.process_time() - cpu0,
        }

    async def report_slowest(self, port: int) -> None:
        """Closed loop: tell the publisher the slowest subscriber's count every 2 ms."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        wid = os.getpid()
        try:
            while True:
                slowest = min((s.count for s in self.subs), default=0)
                with contextlib.suppress(OSError):
                    sock.sendto(f"{wid} {slowest}".encode(), ("127.0.0.1", port))
                await asyncio.sleep(0.002)
        finally:
            sock.close()

    async def drain(self, expected: int, quiet: float, limit: float) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        seen, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if all(s.count >= expected for s in self.subs):
                break
            if self.received != seen:
                seen, still_since = self.received, time.monotonic()
            elif time.monotonic() - still_since > quiet:
                break
            await asyncio.sleep(0.1)
        if self.feedback is not None:
            self.feedback.cancel()
            self.feedback = None
        counts = [s.count for s in self.subs]
        sampled = [s for s in self.subs if s.sampled]
        return {
            "subscribers": len(counts),
            "received": self.received,
            "loss": sum(max(0, expected - c) for c in counts),
            "extra": sum(max(0, c - expected) for c in counts),
            "short": sum(1 for c in counts if c < expected),
            "min": min(counts, default=0),
            "max": max(counts, default=0),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latencies": self.latencies,
            "duplicates": self.duplicates,
            "reorders": self.reorders,
            "gaps": self.gaps,
            "first_seqs": sorted({s.first_seq for s in sampled if s.first_seq is not None}),
            "last_seqs": sorted({s.last_seq for s in sampled if s.last_seq is not None}),
            "other": dict(self.other),
            "dropped": dict(self.dropped),
            "cpu": time.process_time() - self.cpu0,
            "wall": time.monotonic() - self.wall0,
        }

    async def close(self) -> int:
        self.closing = True
        n = 0
        for sub in self.subs:
            if sub.transport is not None and not sub.transport.is_closing():
                sub.transport.write(client_frame(b"\x03\xe8", 0x8))  # 1000
                sub.transport.close()
                n += 1
        self.subs = []
        await asyncio.sleep(0.2)
        return n


async def _serve(pipe: Any) -> None:
    loop = asyncio.get_running_loop()
    gen = SubscriberPool(loop)
    while True:
        command, arg, *rest = await loop.run_in_executor(None, pipe.recv)
        if command == "connect":
            pipe.send(("connected", await gen.connect(arg)))
        elif command == "measure":
            gen.reset()
            if arg:
                gen.feedback = loop.create_task(gen.report_slowest(arg))
            pipe.send(("measuring", None))
        elif command == "drain":
            pipe.send(("result", await gen.drain(arg, *rest)))
        elif command == "close":
            pipe.send(("closed", await gen.close()))
        elif command == "exit":
            await gen.close()
            return


def worker_main(pipe: Any) -> None:
    """Entry point of one load-generator process."""
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(pipe))
