"""A small real WebSocket client for integration tests (the `websockets` library)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class WsClient:
    """Sends and receives protocol frames; waits on events with timeouts.

    A background reader queues incoming frames. With `auto_pong` (the default)
    it answers server pings like a well-behaved client; heartbeat tests turn it
    off to play a client that went silent.
    """

    def __init__(self, ws: ClientConnection, auto_pong: bool) -> None:
        self.ws = ws
        self.auto_pong = auto_pong
        self.frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        token: str | None = None,
        origin: str | None = None,
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
        auto_pong: bool = True,
        **connect_options: Any,
    ) -> WsClient:
        """Open a socket; `connect_options` go to the connection (e.g. `ssl` for wss
        through a test nginx, `local_addr` for another client address)."""
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if cookie:
            hdrs["Cookie"] = cookie
        ws = await connect(
            url,
            additional_headers=hdrs,
            origin=origin,  # type: ignore[arg-type]
            max_size=None,
            max_queue=None,  # keep reading: a full queue would stall the close handshake
            ping_interval=None,
            open_timeout=10,
            **connect_options,
        )
        return cls(ws, auto_pong)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame.get("type") == "ping" and self.auto_pong:
                    with contextlib.suppress(ConnectionClosed):
                        await self.ws.send('{"type":"pong"}')
                    continue
                await self.frames.put(frame)
        except ConnectionClosed:
            pass
        finally:
            await self.frames.put(None)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.frames.get(), timeout)
        if frame is None:
            await self.frames.put(None)  # stay closed for later calls
            code = _rcvd_code(self.ws)
            raise ConnectionClosedByServer(code)
        return frame

    async def expect(self, frame_type: str, timeout: float = 5) -> dict:
        """The next frame of `frame_type`; server pings in between are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame["type"] == frame_type:
                return frame
            if frame["type"] != "ping":
                raise AssertionError(f"expected {frame_type!r}, got {frame}")

    async def welcome(self, timeout: float = 5) -> dict[str, Any]:
        return await self.expect("welcome", timeout)

    async def close_code(self, timeout: float = 5) -> int | None:
        """Wait until the server closes the socket; its close code."""
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return _rcvd_code(self.ws)

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader, 5)


class ConnectionClosedByServer(Exception):
    """The socket closed while a frame was expected."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


def _rcvd_code(ws: ClientConnection) -> int | None:
    """The close code the server sent, or None when the connection just dropped."""
    rcvd = ws.protocol.close_rcvd
    return rcvd.code if rcvd is not None else None
