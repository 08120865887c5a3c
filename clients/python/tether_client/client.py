"""What ChatClient and StreamClient share: one Connection and its events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

from .connection import Connection
from .credentials import Provider
from .events import EventHub, EventStream


def endpoint_url(base: str, path: str) -> str:
    """`http(s)://host` or `ws(s)://host` (or a full socket URL) → the endpoint URL."""
    if base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    if base.rstrip("/").endswith(path.rstrip("/")):
        return base
    return base.rstrip("/") + path


class SocketClient:
    """A client for one endpoint: `connect()`, `close()`, events, `request()`."""

    PATH = "/"

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: Provider | None = None,
        get_ticket: Provider | None = None,
        **options: Any,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self.hub = EventHub()
        self.conn = Connection(
            [endpoint_url(u, self.PATH) for u in urls],
            token=token,
            get_token=get_token,
            get_ticket=get_ticket,
            hub=self.hub,
            **options,
        )
        self.conn.dispatch = self._dispatch

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        raise NotImplementedError

    @property
    def state(self) -> str:
        """`idle`, `connecting`, `connected`, `reconnecting`, `offline` or `closed`."""
        return self.conn.state

    @property
    def welcome(self) -> dict[str, Any] | None:
        return self.conn.welcome

    async def connect(self, wait: bool = True, timeout: float | None = 30) -> Self:
        """Start (and, with `wait`, wait until connected and resumed); returns self."""
        self.conn.start()
        if wait:
            await self.conn.wait_ready(timeout)
        return self

    async def wait_connected(self, timeout: float | None = 30) -> dict[str, Any]:
        """Wait for the (next) connection to be up and resumed; its `welcome`."""
        return await self.conn.wait_ready(timeout)

    async def close(self) -> None:
        await self.conn.close()

    async def request(self, frame: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Any frame that has a reply; see `Connection.request`."""
        return await self.conn.request(frame, timeout)

    def on(self, type: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Call `callback(data)` for every event of `type`; returns an undo."""
        return self.hub.on(type, callback)

    def events(self, *types: str) -> EventStream:
        """An async iterator of events (of `types`, or all) from now on."""
        return self.hub.stream(*types)

    async def __aenter__(self) -> Self:
        try:
            return await self.connect()
        except BaseException:
            await self.close()  # the block never runs: nothing may keep reconnecting
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
