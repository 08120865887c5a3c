"""Load generator of `bench/chat_bench.py`: chat members and senders, one socket each.

A raw `asyncio.Protocol` client, so that the load generator takes little of the
CPU it shares with the server it measures: it does the HTTP upgrade itself,
masks what it sends (RFC 6455 5.3, `wsload.client_frame`), reassembles server
frames across TCP reads (and fragmented messages), and answers both JSON
heartbeats (`ping` → `pong`) and WebSocket pings.

Frames are read without `json.loads` where it is safe: a `message` or `ack`
frame exactly as the server encodes it (compact JSON, fixed key order, strings
without escapes, the body this generator wrote) matches an anchored pattern in
full; anything else (another shape, an escaped string, a type we do not expect)
goes through `json.loads`. Both paths record the same things: every `message`
frame's `seq` in arrival order (the parent checks each socket got each message
of its conversation once and in order), send→ack per ack and send→delivery for
messages from other senders.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import re
import resource
import time
from typing import Any
from urllib.parse import urlsplit

from bench.wsload import GUID, client_frame

# The server's `message` and `ack` frames (realtime.protocol.encode of
# representations.message_frame / messages.Sent.ack), matched in full. String
# values exclude quotes and backslashes, so nothing inside a string can be
# taken for a key; the body is the one `json.dumps({"t": ...})` wrote. A new
# message's PROTOCOL 10 fields (`kind`, and its state after `ts`) are matched as
# such a message has them; frames without them (before PROTOCOL 10) match too.
MESSAGE = re.compile(
    rb'\{"type":"message","conversation":"([^"\\]*)","seq":(\d+),(?:"kind":"message",)?'
    rb'"message_id":"[^"\\]*",'
    rb'"client_id":"[^"\\]*","sender":\{"id":(\d+),"username":"[^"\\]*"\},'
    rb'"body":"\{\\"t\\": ([0-9.eE+-]+)\}","ts":\d+'
    rb'(?:,"reply_to":null,"attachments":\[\],"edited_at":null,"deleted":false,"reactions":\{\})?\}'
)
ACK = re.compile(
    rb'\{"type":"ack","id":"([^"\\]*)","conversation":"[^"\\]*","seq":(\d+),'
    rb'"message_id":"[^"\\]*","ts":\d+,"duplicate":(?:true|false)\}'
)
MESSAGE_PREFIX = b'{"type":"message",'
ACK_PREFIX = b'{"type":"ack",'
PONG = client_frame(b'{"type":"pong"}')
CLOSE_NORMAL = b"\x03\xe8"  # 1000


class ChatLoad:
    """The sockets of one worker process, their counters and the senders' schedule."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        duration: float,
        rate_per_sender: float,
        window: int,
    ) -> None:
        self.loop = loop
        self.duration = duration
        self.interval = 1.0 / rate_per_sender if rate_per_sender else 0.0
        self.window = window
        self.acks: list[float] = []
        self.deliveries: list[float] = []
        self.problems: list[str] = []
        self.received: dict[int, list[int]] = {}
        self.received_total = 0
        self.sent = 0
        self.closing = False
        self.start_at = 0.0
        self.end = 0.0
        self.sockets: list[ChatSocket] = []
        self.cpu_at_start = 0.0

    async def connect(self, people: list[dict[str, Any]], urls: list[str]) -> None:
        """One socket per person, one after the other, each welcomed and synced."""
        for p in people:
            url = urlsplit(urls[p["index"] % len(urls)])
            sock = ChatSocket(self, p, url.hostname or "127.0.0.1", url.port or 80)
            try:
                await self.loop.create_connection(lambda s=sock: s, sock.host, sock.port)
                await asyncio.wait_for(sock.ready, 60)
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.problems.append(f"connect failed: {exc!r}")
                if sock.transport is not None:
                    sock.transport.close()
                continue
            self.sockets.append(sock)

    def start(self, start_at: float) -> None:
        self.start_at = start_at
        self.end = start_at + self.duration
        for sock in self.sockets:
            if sock.person.get("sender"):
                # Senders start spread over one interval: the offered load is
                # steady, not 100 sends at the same instant every interval.
                offset = random.random() * self.interval if self.interval else 0.0
                delay = max(0.0, start_at + offset - time.time())
                self.loop.call_later(delay, sock.begin_sending)

    async def drain(self) -> None:
        """Wait until every socket has been quiet for 2 s (at most 60 s after the end)."""
        await asyncio.sleep(max(0.0, self.end - time.time()))
        deadline = time.time() + 60
        while time.time() < deadline:
            seen = self.received_total
            await asyncio.sleep(2)
            if self.received_total == seen:
                break

    async def close(self) -> None:
        self.closing = True
        waits = []
        for sock in self.sockets:
            if sock.transport is not None and not sock.transport.is_closing():
                sock.transport.write(client_frame(CLOSE_NORMAL, 0x8))
                sock.close_sent = True
                waits.append(sock.closed)
        if waits:  # the server's closing handshake, briefly
            await asyncio.wait(waits, timeout=5)
        for sock in self.sockets:
            if sock.transport is not None:
                sock.transport.close()

    def result(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "acks": self.acks,
            "deliveries": self.deliveries,
            "received": self.received,
            # per sender's index: its conversation has at least this many messages
            "acked": {s.person["index"]: s.last_acked for s in self.sockets if s.last_acked},
            "sent": self.sent,
            "problems": self.problems,
            "cpu": usage.ru_utime + usage.ru_stime,  # the whole process, setup included
            "cpu_run": time.process_time() - self.cpu_at_start,  # from the start signal
        }


class ChatSocket(asyncio.Protocol):
    """One member's socket; `ready` resolves once welcomed and synced."""

    def __init__(self, gen: ChatLoad, person: dict[str, Any], host: str, port: int) -> None:
        self.gen = gen
        self.person = person
        self.host, self.port = host, port
        self.user_id: int = person["id"]
        self.conversation: bytes = person["conversation"].encode()
        self.prefix = f"{person['index']}-"
        self.seqs: list[int] = gen.received.setdefault(person["index"], [])
        self.buf = bytearray()
        self.fragments: bytearray | None = None
        self.transport: asyncio.Transport | None = None
        self.handshaken = False
        self.live = False
        self.key = base64.b64encode(os.urandom(16))
        self.ready: asyncio.Future[None] = gen.loop.create_future()
        self.closed: asyncio.Future[None] = gen.loop.create_future()
        self.close_sent = False
        # sender state
        self.pending: dict[str, float] = {}
        self.last_acked = 0  # the highest seq of this socket's acknowledged sends
        self.inflight = 0
        self.waiting = False
        self.n = 0
        self.next_at = 0.0

    # --- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = (
            "GET /ws/chat/ HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {self.person['token']}\r\n"
            "\r\n"
        ).encode()
        transport.write(request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.live = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready ({exc!r})"))
        elif not self.gen.closing and not self.closed.done():
            self.gen.problems.append(f"connection lost: {exc!r}")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self._read(data)
        except Exception as exc:  # a benchmark that hides its failures measures nothing
            self.gen.problems.append(f"reader crashed: {exc!r}")
            if self.transport is not None:
                self.transport.close()

    def _read(self, data: bytes) -> None:
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
        now = time.time()
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
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
            if b1 & 0x80:  # servers must not mask (RFC 6455 5.1): note it, unmask
                start += 4
            end = start + length
            if end > n:
                break
            if b1 & 0x80:
                self.gen.problems.append("masked server frame")
                key = bytes(buf[start - 4 : start])
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[start:end]))
                buf[start:end] = payload
            opcode = b0 & 0x0F
            if opcode == 0x1 and b0 & 0x80:
                self._text(buf, start, end, now)
            elif opcode == 0x1 or opcode == 0x0:  # a fragmented message
                if opcode == 0x1:
                    self.fragments = bytearray(buf[start:end])
                elif self.fragments is None:
                    self.gen.problems.append("continuation without a first fragment")
                else:
                    self.fragments += buf[start:end]
                    if b0 & 0x80:
                        whole, self.fragments = self.fragments, None
                        self._text(whole, 0, len(whole), now)
            elif opcode == 0x8:
                self._closed_by_server(bytes(buf[start:end]))
            elif opcode == 0x9:
                self._write(client_frame(bytes(buf[start:end]), 0xA))
            elif opcode != 0xA:
                self.gen.problems.append(f"unexpected frame opcode {opcode}")
            pos = end
        if pos:
            del buf[:pos]

    # --- frames ------------------------------------------------------------

    def _text(self, buf: bytearray, start: int, end: int, now: float) -> None:
        if buf.startswith(MESSAGE_PREFIX, start):
            m = MESSAGE.fullmatch(buf, start, end)
            if m is not None:
                if m[1] != self.conversation:
                    self.gen.problems.append("message of another conversation")
                self.seqs.append(int(m[2]))
                self.gen.received_total += 1
                if int(m[3]) != self.user_id:
                    self.gen.deliveries.append(now - float(m[4]))
                return
        elif buf.startswith(ACK_PREFIX, start):
            m = ACK.fullmatch(buf, start, end)
            if m is not None:
                self._acked(m[1].decode(), int(m[2]), now)
                return
        self._json(bytes(buf[start:end]), now)

    def _json(self, payload: bytes, now: float) -> None:
        """Any frame the patterns did not take, read in full."""
        gen = self.gen
        try:
            frame = json.loads(payload)
            kind = frame["type"]
            if kind == "message":
                if frame["conversation"].encode() != self.conversation:
                    gen.problems.append("message of another conversation")
                self.seqs.append(frame["seq"])
                gen.received_total += 1
                if frame["sender"]["id"] != self.user_id:
                    gen.deliveries.append(now - json.loads(frame["body"])["t"])
            elif kind == "ack":
                self._acked(frame["id"], frame["seq"], now)
            elif kind == "ping":
                self._write(PONG)
            elif kind == "error":
                gen.problems.append(frame["code"])
                if not self.ready.done():
                    self._fail(f"error {frame['code']}: {frame.get('message', '')}")
            elif kind == "welcome" and not self.live:
                # Not resuming: live at once.
                self._write(client_frame(b'{"type":"sync","id":"s","positions":{}}'))
            elif kind == "synced" and not self.live and not self.ready.done():
                self.live = True  # its setup is done
                self.ready.set_result(None)
        except Exception as exc:  # a benchmark that hides its failures measures nothing
            gen.problems.append(f"reader crashed: {exc!r}")

    def _acked(self, cid: str, seq: int, now: float) -> None:
        sent = self.pending.pop(cid, None)
        if sent is None:
            return
        self.gen.acks.append(now - sent)
        if seq > self.last_acked:
            self.last_acked = seq
        self.inflight -= 1
        if self.waiting:
            self.waiting = False
            self.gen.loop.call_soon(self._guarded, self._acquire)

    def _closed_by_server(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        if not self.gen.closing:
            reason = payload[2:].decode(errors="replace")
            problem = f"closed by server: {code} {reason}".rstrip()
            if not self.ready.done():
                self._fail(problem)
            else:
                self.gen.problems.append(problem)
        if not self.close_sent:
            self._write(client_frame(payload[:2], 0x8))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.transport is not None:
            self.transport.close()

    # --- sending -----------------------------------------------------------

    def begin_sending(self) -> None:
        self.next_at = time.time()
        self._guarded(self._top)

    def _guarded(self, step: Any) -> None:
        try:
            step()
        except Exception as exc:
            self.gen.problems.append(f"sender crashed: {exc!r}")

    def _top(self) -> None:
        """The top of the send loop: stop at the end, else wait for the next slot."""
        gen = self.gen
        while time.time() < gen.end:
            if gen.interval:
                self.next_at += gen.interval
                delay = max(0.0, self.next_at - time.time())
                gen.loop.call_later(delay, self._guarded, self._acquire)
                return
            if not self._send():
                return

    def _acquire(self) -> None:
        if self._send():
            self._top()

    def _send(self) -> bool:
        """One send if the window allows; else wait for an ack (which calls _acquire)."""
        if self.inflight >= self.gen.window:
            self.waiting = True
            return False
        self.inflight += 1
        self.n += 1
        cid = f"{self.prefix}{self.n}"
        t = time.time()
        self.pending[cid] = t
        # {"type", "id", "conversation", "body": json.dumps({"t": t})} as compact JSON,
        # written directly: the ids need no escaping; json writes a float as repr().
        text = (
            f'{{"type":"send","id":"{cid}","conversation":"{self.person["conversation"]}",'
            f'"body":"{{\\"t\\": {t!r}}}"}}'
        )
        self._write(client_frame(text.encode()))
        self.gen.sent += 1
        return True

    # --- helpers -----------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

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
        return True

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()


async def run_worker(
    people: list[dict[str, Any]],
    urls: list[str],
    start_q: Any,
    duration: float,
    rate_per_sender: float,
    window: int,
    out: Any,
) -> None:
    """Connect `people`, say ready, send from `start_q`'s start time, drain, report."""
    gen = ChatLoad(asyncio.get_running_loop(), duration, rate_per_sender, window)
    await gen.connect(people, urls)
    out.put(("ready", len(gen.sockets)))
    start_at = await asyncio.to_thread(start_q.get)  # every socket of every worker is up
    gen.cpu_at_start = time.process_time()
    gen.start(start_at)
    await gen.drain()
    await gen.close()
    out.put(("done", gen.result()))


def worker(
    people: list[dict[str, Any]],
    urls: list[str],
    start_q: Any,
    duration: float,
    rate: float,
    window: int,
    out: Any,
    loop: str = "auto",
) -> None:
    """Entry point of one load-generator process; `loop`: "asyncio", "uvloop" or
    "auto" (uvloop when installed: its C event loop costs about half as much per
    socket read as asyncio's selector loop, and the reads are most of the work)."""
    main = run_worker(people, urls, start_q, duration, rate, window, out)
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
