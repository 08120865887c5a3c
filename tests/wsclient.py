"""A small real WebSocket client for integration tests (the `websockets` library)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class WsClient:
    """Sends and receives protocol frames; waits on events with timeouts."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        token: str | None = None,
        origin: str | None = None,
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> WsClient:
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
        )
        return cls(ws)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)

    async def expect(self, frame_type: str, timeout: float = 5, skip_pings: bool = True) -> dict:
        """The next frame of `frame_type`; server pings in between are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame["type"] == frame_type:
                return frame
            if not (skip_pings and frame["type"] == "ping"):
                raise AssertionError(f"expected {frame_type!r}, got {frame}")

    async def welcome(self, timeout: float = 5) -> dict[str, Any]:
        return await self.expect("welcome", timeout)

    async def close_code(self, timeout: float = 5) -> int | None:
        """Wait until the server closes the socket; its close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None

    async def close(self) -> None:
        await self.ws.close()
