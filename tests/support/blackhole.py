"""A loopback TCP proxy that can go dark: the peer stays connected but silent.

That is what a connection behind a NAT or proxy looks like after the client
vanished: no FIN, no RST, nothing more from it.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.services import free_port


class BlackholeProxy:
    """Forwards 127.0.0.1:port to a target until `cut()`; then swallows both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cut_event = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    def cut(self) -> None:
        self.cut_event.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if not self.cut_event.is_set():
                    writer.write(data)
                    await writer.drain()
        # Keep the other side open: a dead peer never says goodbye.
        await self.cut_event.wait()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]
        for task in (self._pipe(client_r, server_w), self._pipe(server_r, client_w)):
            t = asyncio.create_task(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()
