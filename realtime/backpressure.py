"""Slow consumers: a bounded outbound queue per socket, fed by the transport's own signal.

daphne's `send` never blocks: a frame goes straight into Twisted's write
buffer, which grows without bound when a client stops reading. Twisted does say
when that buffer is full: it pauses a registered push producer and resumes it
once the buffer drained. Each socket registers one (`Outbound`); while paused,
frames wait in a queue bounded by `OUTBOUND_MAX_FRAMES` / `OUTBOUND_MAX_BYTES`,
and a socket that overflows it is closed with 4509. Nobody else waits for it:
the fan-out loop only appends.
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
            scope = {**scope, RAW_SEND_KEY: send}
        return await self.app(scope, receive, send)


def server_protocol(raw_send: Any) -> Any | None:
    """daphne's WebSocket protocol object behind its `send` (a partial of handle_reply)."""
    if isinstance(raw_send, functools.partial) and raw_send.args:
        protocol = raw_send.args[0]
        if hasattr(protocol, "registerProducer") and getattr(protocol, "transport", None):
            return protocol
    return None


class Outbound:
    """A push producer for one socket's transport, and the frames held while it is paused."""

    def __init__(
        self,
        max_frames: int,
        max_bytes: int,
        flush: Callable[[str], Awaitable[None]],
        protocol: Any = None,
    ) -> None:
        self.protocol = protocol
        # Frames may be written to the transport as ready-made bytes (see
        # `write_frame`) when nothing transforms them on the way (no compression).
        self.direct = protocol is not None and getattr(protocol, "_perMessageCompress", 1) is None
        # The plain TCP socket under the transport (None under TLS or anything else).
        self._socket = _plain_tcp_socket(protocol) if self.direct else None
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.flush = flush
        self.paused = False
        self.queue: deque[tuple[str, int]] = deque()
        self.queued_bytes = 0
        self.peak_frames = 0
        self._drainer: asyncio.Future[None] | None = None

    def write_frame(self, frame: bytes) -> None:
        """Write a ready-made WebSocket frame (see `text_frame`) straight to the transport.

        The fan-out frames a publication once per node and hands every socket the
        same bytes, instead of each socket going through channels, daphne and
        autobahn to frame the same text again.
        """
        protocol = self.protocol
        if protocol.state != protocol.STATE_OPEN:
            return
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
                return  # connection lost; the reactor reports it on its own
            if sent == len(frame):
                return
            frame = frame[sent:]
        transport.write(frame)

    @property
    def blocked(self) -> bool:
        """Frames must queue: the transport is full, or older frames still wait."""
        return self.paused or bool(self.queue)

    def hold(self, text: str) -> bool:
        """Queue a frame; False when the queue would overflow (close with 4509)."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if len(self.queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes:
            return False
        self.queue.append((text, size))
        self.queued_bytes += size
        self.peak_frames = max(self.peak_frames, len(self.queue))
        if not self.paused:
            self._start_drain()
        return True

    # IPushProducer, called by Twisted from the event loop.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._start_drain()

    def stopProducing(self) -> None:
        self.paused = True
        self.queue.clear()
        self.queued_bytes = 0

    def _start_drain(self) -> None:
        if self.queue and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self.queue and not self.paused:
            text, size = self.queue.popleft()
            self.queued_bytes -= size
            try:
                await self.flush(text)
            except Exception:
                log.debug("flush on a closed socket dropped")
                return


def _plain_tcp_socket(protocol: Any) -> Any | None:
    from twisted.internet import tcp

    transport = getattr(protocol, "transport", None)
    if isinstance(transport, tcp.Connection) and hasattr(transport, "dataBuffer"):
        return transport.socket
    return None


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as servers send."""
    payload = text.encode("utf-8")
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def attach(scope: dict[str, Any], max_frames: int, max_bytes: int, flush: Any) -> Outbound | None:
    """An `Outbound` registered on the socket's transport, or None where the server
    offers no such signal (then sends go straight through)."""
    protocol = server_protocol(scope.get(RAW_SEND_KEY))
    if protocol is None:
        return None
    outbound = Outbound(max_frames, max_bytes, flush, protocol)
    try:
        # Twisted's HTTP channel registered itself on the TCP transport before the
        # upgrade and never unregistered: it no longer serves this connection.
        if getattr(protocol.transport, "producer", None) is not None:
            protocol.transport.unregisterProducer()
        protocol.registerProducer(outbound, True)
    except Exception:  # a producer already registered, or the transport just went
        log.debug("could not register a producer", exc_info=True)
        return None
    return outbound
