"""The server patches that free a handshake's HTTP objects as soon as it is upgraded."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from realtime.transport.daphne_compat import patch_daphne_close_codes
from realtime.transport.uvicorn_compat import patch_uvicorn_upgrade_leftovers

UPGRADE = (
    b"GET /ws/stream/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


async def waiting_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()  # the socket's connect event; never answered in these tests


@contextmanager
def a_new_event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A current event loop for the servers' objects; their tasks cancelled after."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        asyncio.set_event_loop(None)


def without_collector(check: Any) -> Any:
    """Run `check` with the cyclic collector off: only reference counting may free."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return check()
    finally:
        if enabled:
            gc.enable()


def test_daphne_upgrade_leaves_no_request_cycle() -> None:
    from daphne.http_protocol import WebRequest
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketFactory
    from twisted.internet.testing import StringTransport

    patch_daphne_close_codes()
    server = Server(waiting_app, endpoints=["tcp:port=0"], signal_handlers=False)
    server.connections = {}
    server.ws_factory = WebSocketFactory(server, server="daphne")
    requests: list[weakref.ref[WebRequest]] = []
    original = WebRequest.requestReceived

    def keep(self: WebRequest, *args: Any) -> Any:
        requests.append(weakref.ref(self))
        return original(self, *args)

    def check() -> None:
        from daphne.http_protocol import HTTPFactory

        WebRequest.requestReceived = keep
        try:
            channel = HTTPFactory(server).buildProtocol(("127.0.0.1", 0))
            channel.makeConnection(StringTransport())
            channel.dataReceived(UPGRADE)
            del channel
            # What daphne's application checker does with a finished request.
            for protocol in [p for p in server.connections if isinstance(p, WebRequest)]:
                del server.connections[protocol]
            del protocol
        finally:
            WebRequest.requestReceived = original
        assert len(requests) == 1
        assert requests[0]() is None  # freed at once: no cycle with its channel

    with a_new_event_loop():
        without_collector(check)


def test_uvicorn_upgrade_leaves_no_parser_cycle() -> None:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    patch_uvicorn_upgrade_leftovers()

    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(
                name, default
            )

        def write(self, data: Any) -> None:
            pass

        def set_protocol(self, protocol: Any) -> None:
            self.protocol = protocol

        def is_closing(self) -> bool:
            return False

    config = Config(app=waiting_app, ws="websockets-sansio", lifespan="off")
    config.load()

    def check() -> None:
        http = HttpToolsProtocol(
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
        transport = Transport()
        http.connection_made(transport)
        http.data_received(UPGRADE)
        assert transport.protocol is not http  # upgraded
        ref = weakref.ref(http)
        del http
        assert ref() is None  # freed at once: no cycle with its parser

    with a_new_event_loop() as loop:
        without_collector(check)
