"""Where a socket's credential comes from (PROTOCOL 2 and 11): a fixed bearer token,
a token provider (connection tokens that expire), or a single-use ticket per attempt."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import httpx

from . import rest
from .tokens import expires_at

Provider = Callable[[], str | Awaitable[str]]
# A provided token this close to its expiry is not worth a handshake: ask again.
STALE_WITHIN = 5.0


async def call(provider: Provider) -> str:
    value = provider()
    if inspect.isawaitable(value):
        value = await value
    return value


async def fetch_ticket(base_url: str, token: str, *, timeout: float = rest.DEFAULT_TIMEOUT) -> str:
    """A single-use socket ticket (`POST /api/auth/ws-ticket/`) for an API token or a
    connection token; raises the typed error of a refusal."""
    call_ = rest.Call("POST", "/api/auth/ws-ticket/", unwrap=lambda body: body["ticket"])
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"), headers=rest.headers(token), timeout=timeout
    ) as client:
        return rest.result(call_, await client.send(rest.build(client, call_)))


class Credentials:
    """Hands each connection attempt its headers and URL."""

    def __init__(
        self,
        token: str | None = None,
        get_token: Provider | None = None,
        get_ticket: Provider | None = None,
    ) -> None:
        self.token = token
        self.get_token = get_token
        self.get_ticket = get_ticket

    @property
    def renewable(self) -> bool:
        """Whether a 4401 may be answered by fetching a new credential."""
        return self.get_token is not None or self.get_ticket is not None

    async def fresh_token(self) -> str:
        """A token from the provider (for a handshake after a 4401, or a `refresh`)."""
        assert self.get_token is not None
        self.token = await call(self.get_token)
        return self.token

    async def for_attempt(self, url: str, force_new: bool) -> tuple[str, dict[str, str]]:
        """(url, headers) for one handshake."""
        headers: dict[str, str] = {}
        if self.get_ticket is not None:
            # Tickets are single use: one per attempt, and never a token in a URL.
            ticket = await call(self.get_ticket)
            sep = "&" if "?" in url else "?"
            return f"{url}{sep}ticket={quote(ticket, safe='')}", headers
        if self.get_token is not None and (force_new or self._stale()):
            await self.fresh_token()
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return url, headers

    def _stale(self) -> bool:
        if not self.token:
            return True
        exp = expires_at(self.token)
        return exp is not None and exp - time.time() < STALE_WITHIN
