"""Slow consumers and direct writes: one `Outbound` per socket, fed by the server's own signal.

daphne's `send` never blocks: a frame goes straight into Twisted's write buffer,
which grows without bound when a client stops reading. Twisted does say when
that buffer is full: it pauses a registered push producer and resumes it once
the buffer drained. uvicorn's `send` does the opposite and waits while the
transport is paused, which would stall a fan-out loop behind one slow client.

So each socket gets an `Outbound` that knows whether its transport is paused;
while it is, frames wait in a queue bounded by `OUTBOUND_MAX_FRAMES` /
`OUTBOUND_MAX_BYTES`, and a socket that overflows it is closed with 4509.
Nobody else waits for it: the fan-out only appends. The same object writes
ready-made frames straight to the transport (`write_frame`), so a publication
is framed once per node rather than once per socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("tether.backpressure")

RAW_SEND_KEY = "tether.raw_send"


class RawSendMiddleware:
    """Keep the server's own `send` in the scope: it leads to the transport."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            scope[RAW_SEND_KEY] = send  # in place: see OriginCheckMiddleware
        return await self.app(scope, receive, send)


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as servers send.

    Never compressed: with permessage-deflate negotiated, a frame without RSV1 is
    an uncompressed message, which RFC 7692 allows."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class Outbound:
    """One socket's bounded queue of frames held while its transport is paused."""

    # Fan-out frames a text once for every socket that takes ready-made frames.
    frame = staticmethod(text_frame)

    def __init__(
        self, max_frames: int, max_bytes: int, flush: Callable[[str], Awaitable[None]]
    ) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.flush = flush
        self.direct = False  # whether `write_frame` may be used
        self._paused = False
        # Created on first use: an empty deque is 600 bytes on every idle socket.
        self.queue: deque[tuple[str, int]] | tuple[()] = ()
        self.queued_bytes = 0
        self._drainer: asyncio.Future[None] | None = None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def blocked(self) -> bool:
        """Frames must queue: the transport is full, or older frames still wait."""
        return self.paused or bool(self.queue)

    def write_frame(self, frame: bytes) -> bool:
        """Write a ready-made frame (see `text_frame`) straight to the transport;
        False when the socket is not (or no longer) open."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        raise NotImplementedError

    def hold(self, text: str) -> bool:
        """Queue a frame; False when the queue would overflow (close with 4509)."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if len(self.queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes:
            return False
        if not self.queue:
            self.queue = deque()
        self.queue.append((text, size))
        self.queued_bytes += size
        self._start_drain()
        return True

    def discard(self) -> None:
        self._paused = True
        self.queue = ()
        self.queued_bytes = 0

    def _start_drain(self) -> None:
        if self.queue and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.ensure_future(self._drain())

    async def _writable(self) -> bool:
        """Wait until the transport takes data again; False to leave it to a later call."""
        return not self.paused

    async def _drain(self) -> None:
        while self.queue:
            if not await self._writable():
                return
            text, size = self.queue.popleft()
            self.queued_bytes -= size
            try:
                if not (self.direct and self.write_frame(text_frame(text))):
                    await self.flush(text)
            except Exception:
                log.debug("flush on a closed socket dropped")
                return


class DaphneOutbound(Outbound):
    """daphne (Twisted): a push producer on the socket's TCP transport."""

    def __init__(self, protocol: Any, *args: Any) -> None:
        super().__init__(*args)
        self.protocol = protocol
        self.direct = getattr(protocol, "_perMessageCompress", 1) is None
        # The plain TCP socket under the transport (None under TLS or anything else).
        self._socket = _plain_tcp_socket(protocol)

    def write_frame(self, frame: bytes) -> bool:
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return False
        transport = protocol.transport
        sock = self._socket
        if (
            sock is not None
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and not transport.disconnecting
        ):
            # Twisted always defers a write to the reactor: register the socket for
            # writing, send on the next loop pass, unregister (three system calls
            # and a loop pass per frame). With nothing waiting in its buffer,
            # sending now keeps the order and costs one call; what the kernel does
            # not take goes through Twisted's buffer (and its producer signal).
            try:
                sent = sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                return True  # connection lost; the reactor reports it on its own
            if sent == len(frame):
                return True
            frame = frame[sent:]
        transport.write(frame)
        return True

    def abort(self) -> None:
        self.protocol.transport.abortConnection()

    # IPushProducer, called by Twisted from the event loop.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._start_drain()

    def stopProducing(self) -> None:
        self.discard()


class UvicornOutbound(Outbound):
    """uvicorn (websockets sans-I/O): its protocol's `writable` event is the signal."""

    def __init__(self, protocol: Any, *args: Any) -> None:
        super().__init__(*args)
        from websockets.protocol import State

        self.protocol = protocol
        self._open = State.OPEN
        self.direct = True

    @property
    def paused(self) -> bool:
        return self._paused or not self.protocol.writable.is_set()

    def write_frame(self, frame: bytes) -> bool:
        protocol = self.protocol
        if protocol.conn.state is not self._open or protocol.transport.is_closing():
            return False
        protocol.transport.write(frame)  # asyncio writes at once, buffers the rest
        return True

    def abort(self) -> None:
        self.protocol.transport.abort()

    async def _writable(self) -> bool:
        if self._paused:
            return False
        await self.protocol.writable.wait()
        return not self._paused


def _plain_tcp_socket(protocol: Any) -> Any | None:
    from twisted.internet import tcp

    transport = getattr(protocol, "transport", None)
    if isinstance(transport, tcp.Connection) and hasattr(transport, "dataBuffer"):
        return transport.socket
    return None


def attach(scope: dict[str, Any], max_frames: int, max_bytes: int, flush: Any) -> Outbound | None:
    """An `Outbound` for the socket of `scope`, or None where the server offers no
    signal (then sends go through the ASGI `send` as usual)."""
    raw_send = scope.get(RAW_SEND_KEY)
    args = (max_frames, max_bytes, flush)
    # daphne: `send` is functools.partial(server.handle_reply, protocol).
    if isinstance(raw_send, functools.partial) and raw_send.args:
        protocol = raw_send.args[0]
        if hasattr(protocol, "registerProducer") and getattr(protocol, "transport", None):
            outbound = DaphneOutbound(protocol, *args)
            try:
                # Twisted's HTTP channel registered itself on the TCP transport before
                # the upgrade and never unregistered: it no longer serves this socket.
                if getattr(protocol.transport, "producer", None) is not None:
                    protocol.transport.unregisterProducer()
                protocol.registerProducer(outbound, True)
            except Exception:  # the transport just went
                log.debug("could not register a producer", exc_info=True)
                return None
            return outbound
    # uvicorn's websockets sans-I/O protocol: `send` is its bound method.
    protocol = getattr(raw_send, "__self__", None)
    if protocol is not None and all(
        hasattr(protocol, name) for name in ("writable", "conn", "transport")
    ):
        return UvicornOutbound(protocol, *args)
    return None
