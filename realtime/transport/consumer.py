"""The two socket endpoints. Thin: frame in → protocol.parse → handler → frames out.

Everything a socket does on its way out, whatever the reason, ends in
`TetherConsumer.cleanup` (docs/architecture.md, rule 5).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from monitoring import metrics
from realtime.node import registry
from realtime.node.connection import HEARTBEAT_BURST, HEARTBEATS_PER_SECOND, Connection
from realtime.node.ratelimit import TokenBucket
from realtime.node.runtime import NodeRuntime, get_runtime
from realtime.protocol import (
    CLOSE_REASONS,
    PROTOCOL_VERSION,
    Close,
    Code,
    Frame,
    TetherError,
    bad_request,
    close_label,
    encode,
    now_ms,
    parse_frame,
    user_repr,
    utf8_length_exceeds,
)
from realtime.transport import backpressure
from realtime.transport.origin import header

log = logging.getLogger("tether.consumers")

Handler = Callable[["TetherConsumer", Frame], Awaitable[dict[str, Any] | None]]
# Frames that prove liveness: outside the rate limit (PROTOCOL 8), but bounded by a
# wide bucket of their own (docs/security.md).
HEARTBEAT_TYPES = frozenset({"ping", "pong"})
# How long a close may wait for the transport before the connection is dropped.
CLOSE_SECONDS = 5.0


def new_connection_id() -> str:
    return "c_" + secrets.token_hex(12)


class TetherConsumer(AsyncWebsocketConsumer):
    """Handshake, welcome, framing, errors, heartbeat, limits and cleanup."""

    endpoint = ""
    handlers: dict[str, Handler] = {}

    conn: Connection | None = None
    _accepted = False
    _cleaned = False
    _control: asyncio.Future[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self._serve(scope, receive, send)
        except asyncio.CancelledError:
            # daphne cancels every consumer when the server stops: tell the
            # client to resume elsewhere, then clean up like any other exit.
            if self.conn is not None and not self.conn.closing:
                self.conn.closing = True
                try:
                    await self.close(Close.RESTART)
                except Exception:
                    pass
            await self.cleanup(Close.RESTART, "server shutdown")
            raise
        except Exception:
            # The consumer itself failed (e.g. the channel layer went away):
            # daphne closes the socket with 1011; the records must go too.
            log.exception("consumer of %s failed", self.conn and self.conn.id)
            await self.cleanup(Close.INTERNAL, "consumer failed")
            raise

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """channels' `AsyncConsumer.__call__` without a channel-layer channel per socket.

        A channel of its own costs every socket a receive task, a queue and a layer
        subscription, and every frame a round of `asyncio.wait` over two tasks.
        Messages for a socket from elsewhere (kick, joined, left) come through its
        node's control channel instead (`on_control`); frames are read straight off the server.
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    def on_control(self, message: dict[str, Any]) -> None:
        """A control message from the hub: handled in arrival order, off the hub's loop."""
        self._control = asyncio.ensure_future(self._run_control(self._control, message))

    async def _run_control(
        self, previous: asyncio.Future[None] | None, message: dict[str, Any]
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        try:
            await self.dispatch(message)
        except Exception:
            log.exception(
                "control %s on %s failed", message.get("type"), self.conn and self.conn.id
            )

    async def dispatch(self, message: dict[str, Any]) -> None:
        # channels' own dispatch first hops to the shared database thread to close
        # old connections, before every frame: a fifth of a busy node's time.
        # Tether's database work runs on pool threads that do that themselves
        # (realtime.node.db.in_pool, database_sync_to_async).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    # --- handshake ---------------------------------------------------------

    async def connect(self) -> None:
        try:
            await self.open_connection()
        except Exception:
            log.exception("could not open a connection")
            if self.conn is not None:
                await self.close_with(Close.INTERNAL)
            else:
                await self.close(Close.INTERNAL)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        self._accepted = True
        await super().accept(subprotocol, headers)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        # Refused before the handshake completes, a client sees only HTTP 403;
        # Tether always answers with a close code (PROTOCOL 2), so accept first.
        if not self._accepted:
            await self.accept()
        if self.conn is None and isinstance(code, int) and not isinstance(code, bool):
            # Refused at the handshake (4401, 4403, 4503, 1012, 1011): never a live
            # connection, so cleanup() does not count it; the 4401 alert needs it.
            metrics.DISCONNECTS.labels(self.endpoint, close_label(code)).inc()
        await super().close(code, reason)

    async def open_connection(self) -> None:
        """Authenticate, check capacity and record the socket; then accept it and greet it.

        The handshake is answered only once the socket is recorded, in the same turn of
        the event loop as the `welcome`: both leave in one write (a reconnect storm is
        thousands of handshakes; docs/benchmarks.md, accepts per second)."""
        user = self.scope.get("user")
        auth = self.scope.get("tether_auth")
        if auth is not None and auth.failed:
            await self.close(Close.INTERNAL)
            return
        if auth is not None and auth.disabled:
            await self.close(Close.FORBIDDEN)
            return
        if user is None or not user.is_authenticated or auth is None:
            await self.close(Close.UNAUTHENTICATED)
            return
        runtime = get_runtime()
        await runtime.ensure_started()
        if runtime.draining:
            await self.close(Close.RESTART)
            return
        if len(runtime.connections) >= settings.MAX_CONNECTIONS:
            log.warning("node at MAX_CONNECTIONS=%d: refusing with 4503", settings.MAX_CONNECTIONS)
            await self.close(Close.OVER_CAPACITY)
            return
        client = self.scope.get("client") or ("", 0)
        info = registry.ConnectionInfo(
            id=new_connection_id(),
            node=runtime.name,
            user_id=user.pk,
            endpoint=self.endpoint,
            channel_name=runtime.hub.control_channel,
            remote_addr=str(client[0] or ""),
            user_agent=header(self.scope, b"user-agent") or "",
            auth_method=auth.method,
            auth_ref=auth.ref,
        )
        now = time.monotonic()
        conn = Connection(
            info=info,
            username=user.get_username(),
            bucket=TokenBucket(settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST, now),
            send_frame=self.send_frame,
            send_text=self.send_text,
            close=self.close_with,
            control=self.on_control,
            expires_at=getattr(auth, "expires_at", None),
        )
        assert runtime.node_id is not None
        if not await registry.admit(info, runtime.node_id, settings.MAX_CONNECTIONS_PER_USER):
            await self.close(Close.OVER_CAPACITY)
            return
        self.conn = conn
        # Starting positions are read before `welcome`: every message stored after
        # the client hears `welcome` is above them, so it is delivered live. Only
        # then is the socket listed (no frame may reach it before `welcome`).
        await self.before_welcome()
        await self.accept()
        conn.outbound = backpressure.attach(
            self.scope, settings.OUTBOUND_MAX_FRAMES, settings.OUTBOUND_MAX_BYTES, self._send_raw
        )
        runtime.add(conn)
        log.info(
            "connect %s user=%s node=%s endpoint=%s auth=%s addr=%s",
            info.id,
            self.conn.username,
            info.node,
            info.endpoint,
            info.auth_method,
            info.remote_addr,
            extra={
                "event": "connect",
                "connection_id": info.id,
                "user": self.conn.username,
                "node": info.node,
                "endpoint": info.endpoint,
                "auth": info.auth_method,
            },
        )
        await self.send_frame(self.welcome())
        metrics.CONNECTS.labels(self.endpoint).inc()
        await self.on_open()

    @property
    def runtime(self) -> NodeRuntime:
        return get_runtime()

    @property
    def user(self) -> Any:
        return self.scope["user"]

    @property
    def user_repr(self) -> dict[str, Any]:
        return user_repr(self.user)

    async def before_welcome(self) -> None:
        """Endpoint-specific reads that must precede `welcome` (no frame may)."""

    async def on_open(self) -> None:
        """After `welcome`: endpoint-specific subscriptions and announcements."""

    async def on_leave(self) -> None:
        """During cleanup, before the record goes: leave subscriptions."""

    async def after_removed(self) -> None:
        """During cleanup, after the record is gone: presence and the like."""

    def welcome(self) -> dict[str, Any]:
        assert self.conn is not None
        return {
            "type": "welcome",
            "protocol": PROTOCOL_VERSION,
            "connection_id": self.conn.id,
            "node": get_runtime().name,
            "user": self.user_repr,
            "heartbeat": {
                "interval": settings.HEARTBEAT_INTERVAL,
                "timeout": settings.PING_TIMEOUT,
            },
            "limits": {
                "max_frame_bytes": settings.MAX_FRAME_BYTES,
                "max_body_chars": settings.MAX_BODY_CHARS,
                "max_subscriptions": settings.MAX_SUBSCRIPTIONS_PER_CLIENT,
                "rate": {
                    "per_second": settings.RATE_LIMIT_PER_SECOND,
                    "burst": settings.RATE_LIMIT_BURST,
                },
            },
            "server_time": now_ms(),
            "expires_at": self.conn.expires_at,
        }

    # --- frames in ---------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        conn = self.conn
        if conn is None or conn.closing:
            return
        now = time.monotonic()
        conn.heard(now)
        if text_data is None:
            if conn.binary_violation():
                await self.close_with(Close.PROTOCOL_VIOLATION)
            else:
                await self.send_frame(
                    TetherError(
                        Code.BAD_JSON,
                        "binary frames are not accepted; send one JSON object per text frame "
                        "(another binary frame closes the socket with 4400)",
                    ).frame()
                )
            return
        if utf8_length_exceeds(text_data, settings.MAX_FRAME_BYTES):
            await self.close_with(Close.TOO_BIG)
            return
        try:
            frame = parse_frame(text_data)
        except TetherError as error:
            if error.code == Code.BAD_JSON and conn.bad_json_violation():
                await self.close_with(Close.PROTOCOL_VIOLATION)
                return
            # A malformed frame costs a token too: errors are no free flood.
            if await self._over_rate(now, error.request_id):
                return
            await self.send_frame(error.frame())
            return
        conn.good_frame()
        metrics.FRAMES_IN.labels(frame.type if frame.type in self.handlers else "unknown").inc()
        if frame.type in HEARTBEAT_TYPES:
            retry_after = conn.heartbeats.take(now)
            if retry_after:
                metrics.RATE_LIMITED.inc()
                await self.send_frame(self._rate_limited(retry_after, frame.id, heartbeat=True))
                return
        elif await self._over_rate(now, frame.id):
            return
        await self.dispatch_frame(frame)

    async def _over_rate(self, now: float, request_id: str | None) -> bool:
        """Take a token; answer `rate_limited` or close 4429 when there is none."""
        assert self.conn is not None
        retry_after, flooding = self.conn.rate_check(now)
        if flooding:
            await self.close_with(Close.FLOODING)
            return True
        if retry_after:
            metrics.RATE_LIMITED.inc()
            await self.send_frame(self._rate_limited(retry_after, request_id))
            return True
        return False

    def _rate_limited(
        self, retry_after: int, request_id: str | None, heartbeat: bool = False
    ) -> dict[str, Any]:
        rate, burst = settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST
        what = "frames"
        if heartbeat:
            rate, burst, what = HEARTBEATS_PER_SECOND, HEARTBEAT_BURST, "ping/pong frames"
        return TetherError(
            Code.RATE_LIMITED,
            f"{rate} {what} per second, burst {burst}; retry in {retry_after} ms",
            retry_after=retry_after,
        ).frame(request_id)

    async def before_frame(self, frame: Frame) -> None:
        """Endpoint-specific bookkeeping before a valid frame is handled."""

    async def dispatch_frame(self, frame: Frame) -> None:
        """Run the frame's handler; every failure becomes an `error` frame."""
        await self.before_frame(frame)
        handler = self.handlers.get(frame.type)
        try:
            if handler is None:
                raise TetherError(
                    Code.UNKNOWN_TYPE,
                    f"type {frame.type[:64]!r} is not known on /ws/{self.endpoint}/",
                )
            reply = await handler(self, frame)
        except TetherError as error:
            await self.send_frame(error.frame(frame.id))
            return
        except Exception:
            log.exception("handler for %r failed on %s", frame.type, self.conn and self.conn.id)
            await self.send_frame(
                TetherError(Code.INTERNAL, "the server failed; nothing was stored").frame(frame.id)
            )
            return
        if reply is not None:
            if frame.id is not None:
                reply = {"type": reply.pop("type"), "id": frame.id, **reply}
            await self.send_frame(reply)

    # --- frames out and closing -------------------------------------------

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Encode and send one frame."""
        kind = frame["type"]
        metrics.FRAMES_OUT.labels(kind).inc()
        if kind == "error":
            metrics.ERRORS.labels(frame["code"]).inc()
        await self.send_text(encode(frame))

    async def send_text(self, text: str) -> None:
        """Send one encoded frame, stamping the outbound clock for the sweeper."""
        conn = self.conn
        if conn is not None:
            if conn.closing:
                return
            conn.last_out = time.monotonic()
            outbound = conn.outbound
            if outbound is not None:
                if outbound.blocked:
                    if not outbound.hold(text):
                        self._close_slow(outbound)
                    return
                if outbound.direct and outbound.write_frame(backpressure.text_frame(text)):
                    return
        await self._send_raw(text)

    def _close_slow(self, outbound: backpressure.Outbound) -> None:
        assert self.conn is not None
        log.warning(
            "connection %s does not read: %d frames / %d bytes waiting; closing 4509",
            self.conn.id,
            len(outbound.queue),
            outbound.queued_bytes,
        )
        outbound.discard()
        metrics.SLOW_CONSUMER_CLOSES.inc()
        get_runtime().spawn(self.close_with(Close.SLOW_CONSUMER))

    async def _send_raw(self, text: str) -> None:
        try:
            await self.send(text_data=text)
        except Exception:
            # The transport is gone (the disconnect event is on its way): a fan-out
            # loop must not fail for everyone because of this one socket.
            if self.conn is not None:
                self.conn.closing = True
            log.debug("send on a closed socket %s dropped", self.conn and self.conn.id)

    async def close_with(self, code: int) -> None:
        """Close with `code` and clean up now: a dead peer may never answer the close."""
        if self.conn is None or self.conn.closing:
            return
        self.conn.closing = True
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.close(code)
        except TimeoutError:
            # The transport does not even take the close frame (uvicorn waits while
            # a client that stopped reading has a full buffer): drop the connection.
            if self.conn.outbound is not None:
                self.conn.outbound.abort()
        finally:  # a transport already gone must not skip the cleanup
            await self.cleanup(code, "closed by the server")

    async def tether_close(self, message: dict[str, Any]) -> None:
        """Control message from any node (kick, logout, revoked credential)."""
        await self.close_with(int(message.get("code", Close.FORBIDDEN)))

    async def tether_rights_changed(self, message: dict[str, Any]) -> None:
        """Control message from any node: the user's rights changed (node/control.py)."""
        if self.conn is not None and not self.conn.closing:
            await self.on_rights_changed()

    async def on_rights_changed(self) -> None:
        """End what the user's current rights no longer allow (endpoint-specific)."""

    async def disconnect(self, code: int) -> None:
        await self.cleanup(code, "closed by the client or the network")

    async def cleanup(self, code: int, origin: str) -> None:
        """The one cleanup of every exit path: local state, registry record."""
        if self._cleaned or self.conn is None:
            return
        self._cleaned = True
        conn = self.conn
        conn.closing = True
        runtime = get_runtime()
        runtime.discard(conn)
        try:
            await self.on_leave()
        except Exception:
            log.exception("leaving subscriptions of %s failed", conn.id)
        try:
            await asyncio.shield(registry.remove_connection(conn.id))
            await asyncio.shield(self.after_removed())
        except Exception:
            # The reaper removes it with the node if this fails (e.g. database down).
            log.exception("could not remove connection record %s", conn.id)
        duration = time.monotonic() - conn.connected_at
        metrics.DISCONNECTS.labels(conn.info.endpoint, close_label(code)).inc()
        reason = CLOSE_REASONS.get(code, "abnormal" if code == 1006 else "other")
        # One line per disconnect (README, runbook): who, where, how long, how it ended.
        log.info(
            "disconnect %s user=%s node=%s endpoint=%s duration=%.1fs code=%s reason=%s (%s)",
            conn.id,
            conn.username,
            conn.info.node,
            conn.info.endpoint,
            duration,
            code,
            reason,
            origin,
            extra={
                "event": "disconnect",
                "connection_id": conn.id,
                "user": conn.username,
                "node": conn.info.node,
                "endpoint": conn.info.endpoint,
                "duration_s": round(duration, 3),
                "close_code": code,
                "close_reason": reason,
            },
        )


async def handle_ping(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    """PROTOCOL 5: answer at once, echoing the client's clock."""
    reply: dict[str, Any] = {"type": "pong"}
    ts = frame.number("ts", required=False)
    if ts is not None:
        reply["ts"] = ts
    reply["server_time"] = now_ms()
    reply["load"] = get_runtime().load()
    return reply


async def handle_refresh(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    """PROTOCOL 11: a newer connection token for the same user moves the expiry."""
    token = frame.get("token")
    if not isinstance(token, str) or not token:
        raise bad_request("token", "is required: a connection token (JWT)")
    # Put into the scope by the authentication middleware of a socket that rests on a
    # connection token: realtime knows no credential (docs/architecture.md, "The house").
    refresh = consumer.scope.get("tether_refresh")
    if refresh is None:
        raise bad_request("token", "this socket does not rest on a connection token")
    expires_at = await refresh(token)
    assert consumer.conn is not None
    consumer.conn.expires_at = expires_at
    return {"type": "result", "data": {"expires_at": expires_at}}


async def handle_pong(consumer: TetherConsumer, frame: Frame) -> None:
    """The client's answer to a server ping; hearing it was the point."""
    return None


BASE_HANDLERS: dict[str, Handler] = {
    "ping": handle_ping,
    "pong": handle_pong,
    "refresh": handle_refresh,
}
