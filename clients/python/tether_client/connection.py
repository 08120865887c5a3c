"""One resilient socket (PROTOCOL 2 to 5, 11): connect, `welcome`, request and reply by
id, heartbeat both ways, close codes obeyed, full-jitter reconnects, and a connection
token refreshed before it expires. `ChatClient` and `StreamClient` build on it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from . import backoff
from .credentials import Credentials, Provider
from .errors import (
    Disconnected,
    Forbidden,
    NotAuthenticated,
    RequestTimeout,
    TetherError,
    from_frame,
)
from .events import EventHub

log = logging.getLogger("tether_client")

# Close codes after which reconnecting on our own would be wrong (PROTOCOL 4);
# 4401 is retried once when a provider can give a new credential.
NO_RETRY_CODES = frozenset({1000, 4400, 4401, 4403})
# Our own close of a socket we gave up on (4000-4999 is the application's range).
CLIENT_GAVE_UP = 4000
ABNORMAL = 1006
CONNECT_TIMEOUT = 15.0
REQUEST_TIMEOUT = 15.0
# Renew a connection token this long before it expires (or at a third of its life left).
REFRESH_BEFORE = 60.0
REFRESH_RETRY = 2.0
# A sync replay is one frame per message; nothing Tether sends comes near this.
MAX_INCOMING_BYTES = 16 * 1024 * 1024

Hook = Callable[[dict[str, Any]], Awaitable[None]]
ReplyHook = Callable[[dict[str, Any]], None]


def _now_ms() -> float:
    return time.time() * 1000


class Connection:
    """A socket to one endpoint (`/ws/chat/` or `/ws/stream/`) that keeps itself up.

    `url` is a full socket URL, or several (other nodes) tried in turn on reconnect.
    Credentials: `token` (an API token or a connection token, sent as
    `Authorization: Bearer`), `get_token` (returns a fresh connection token; used for
    the handshake after a 4401 and for `refresh` before `expires_at`), or
    `get_ticket` (a single-use ticket per attempt, in the query string).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: Provider | None = None,
        get_ticket: Provider | None = None,
        headers: dict[str, str] | None = None,
        origin: str | None = None,
        random: Callable[[], float] = _random.random,
        connect_timeout: float = CONNECT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        refresh_before: float = REFRESH_BEFORE,
        hub: EventHub | None = None,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("at least one url")
        self.credentials = Credentials(token, get_token, get_ticket)
        self.headers = dict(headers or {})
        self.origin = origin
        self.random = random
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.refresh_before = refresh_before
        self.hub = hub or EventHub()
        self.state = "idle"
        self.welcome: dict[str, Any] | None = None
        self.expires_at: float | None = None
        self.attempt = 0
        self.generation = 0  # one per welcome: which connection a frame went out on
        self.close_code: int | None = None
        # Run after each `welcome`: before the application may send, then after.
        self.on_welcome: list[Hook] = []
        self.on_ready: list[Hook] = []
        # Endpoint-specific frames: the chat and stream clients set their own.
        self.dispatch: Hook = _ignore
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        # Set once the client resumed (chat: its `sync` answered); clients that resume
        # asynchronously set `resume_gate` and call `mark_resumed()` themselves.
        self._resumed = asyncio.Event()
        self.resume_gate = False
        self._stopped = True
        self._runner: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._conn_tasks: set[asyncio.Task] = set()
        self._pending: dict[str, tuple[asyncio.Future, ReplyHook | None]] = {}
        self._ids = itertools.count(1)
        self._url_index = 0
        self._last_heard = 0.0
        self._last_sent = 0.0
        self._up_since = 0.0
        self._clock_offset = 0.0  # server time minus ours, in ms, from `welcome`
        self._gave_up: int | None = None

    # --- life cycle ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Welcomed and resumed: frames sent now reach the server in order."""
        return self._ready.is_set()

    def start(self) -> None:
        """Start connecting in the background (idempotent)."""
        if not self._stopped:
            return
        self._stopped = False
        self._runner = asyncio.create_task(self._run(), name="tether-connection")

    def mark_resumed(self) -> None:
        if self._ready.is_set():
            self._resumed.set()

    async def wait_ready(self, timeout: float | None = 30) -> dict[str, Any]:
        """Wait until connected and resumed; the `welcome`. Raises the reason when the
        client stopped for good instead (NotAuthenticated, Forbidden, Disconnected)."""
        async with asyncio.timeout(timeout):
            while not self._resumed.is_set():
                if self._stopped or self._runner is None or self._runner.done():
                    raise self._stop_error()
                waiter = asyncio.create_task(self._resumed.wait())
                runner = self._runner
                waits = {waiter} | ({runner} if runner else set())
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        assert self.welcome is not None
        return self.welcome

    def _stop_error(self) -> TetherError:
        code = self.close_code
        if code == 4401:
            return NotAuthenticated(detail="closed with 4401: new credentials needed")
        if code == 4403:
            return Forbidden(detail="closed with 4403")
        return Disconnected(detail=f"stopped (close code {code})")

    async def close(self) -> None:
        """Close for good (1000); no reconnect until `start()` again."""
        self._stopped = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000), 5)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            self._runner = None
        for task in list(self._tasks):
            task.cancel()
        self._teardown()
        self._set_state("closed")

    def drop(self) -> None:
        """Abort the current socket at once, as a dead network would; the client
        reconnects as after any failure (for tests and for an app that knows better)."""
        self._give_up(CLIENT_GAVE_UP)

    def spawn(self, coro: Awaitable[Any], *, per_connection: bool = False) -> asyncio.Task:
        """Run a coroutine the client owns; `per_connection` ones end with the socket."""
        task = asyncio.ensure_future(coro)
        bucket = self._conn_tasks if per_connection else self._tasks
        bucket.add(task)
        task.add_done_callback(bucket.discard)
        task.add_done_callback(_log_failure)
        return task

    def _set_state(self, state: str, **extra: Any) -> None:
        self.state = state
        self.hub.emit("state", {"state": state, "attempt": self.attempt, **extra})

    # --- the supervisor -------------------------------------------------------

    async def _run(self) -> None:
        force_new = False
        tried_new = False
        while not self._stopped:
            try:
                code, was_up = await self._attempt(force_new)
            except Exception:
                # A bug here must not end the reconnect loop for good.
                log.exception("tether_client: connection attempt failed")
                self._teardown()
                code, was_up = CLIENT_GAVE_UP, False
            force_new = False
            if self._stopped:
                break
            self.close_code = code
            if was_up:
                tried_new = False
                if time.monotonic() - self._up_since >= backoff.RESET_AFTER:
                    self.attempt = 0
            if code == 4401 and self.credentials.renewable and not tried_new:
                # The token expired or the ticket was spent: one new credential tells
                # that apart from a refusal; a second 4401 in a row needs a person.
                tried_new = force_new = True
                continue
            if code == 4401:
                self._stop("auth", code)
                self.hub.emit("auth_required", {"code": code})
                return
            if code in NO_RETRY_CODES:
                self._stop("forbidden" if code == 4403 else "closed", code)
                return
            if code == 1012:
                delay = self.random() * backoff.RESTART_WINDOW
            else:
                delay = backoff.backoff_delay(self.attempt, self.random)
            self.attempt += 1
            if len(self.urls) > 1:
                # Maybe the node is the trouble (draining, full): try the next one.
                self._url_index = (self._url_index + 1) % len(self.urls)
            self._set_state("reconnecting", code=code, delay=delay)
            await asyncio.sleep(delay)

    def _stop(self, reason: str, code: int | None) -> None:
        self._stopped = True
        self._set_state("offline", reason=reason, code=code)

    async def _attempt(self, force_new: bool) -> tuple[int, bool]:
        """One connection from handshake to close: (close code, whether welcomed)."""
        first = self.attempt == 0 and self.generation == 0
        self._set_state("connecting" if first else "reconnecting", delay=0)
        self._gave_up = None
        url = self.urls[self._url_index]
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.connect_timeout):
                url, auth = await self.credentials.for_attempt(url, force_new)
        except TetherError as refused:
            # The ticket or token provider was refused: a verdict, not network trouble.
            return (4401 if refused.status in (401, 403) else CLIENT_GAVE_UP), False
        except Exception as trouble:
            log.warning("tether_client: getting a credential failed: %r", trouble)
            return CLIENT_GAVE_UP, False
        left = max(0.1, self.connect_timeout - (time.monotonic() - started))
        try:
            async with asyncio.timeout(left):
                ws = await connect(
                    url,
                    additional_headers={**self.headers, **auth},
                    origin=self.origin,  # type: ignore[arg-type]
                    open_timeout=None,
                    ping_interval=None,  # the JSON heartbeat crosses every proxy
                    close_timeout=5,
                    max_size=MAX_INCOMING_BYTES,
                    max_queue=None,  # we read at once; the server bounds what it sends
                )
                self._ws = ws
                first_frame = await ws.recv()
        except ConnectionClosed as closed:
            self._ws = None
            return (closed.rcvd.code if closed.rcvd else ABNORMAL), False
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as trouble:
            log.debug("tether_client: connecting to %s failed: %r", url, trouble)
            self._abort_pending()
            return CLIENT_GAVE_UP, False
        except BaseException:
            self._abort_pending()  # cancelled by close(): no half-open socket left
            raise
        return await self._serve(ws, first_frame)

    def _abort_pending(self) -> None:
        if self._ws is not None:
            self._ws.transport.abort()
        self._ws = None

    async def _serve(self, ws: ClientConnection, first_frame: str | bytes) -> tuple[int, bool]:
        was_up = False
        try:
            frame = _decode(first_frame)
            if frame is None or frame.get("type") != "welcome":
                raise _ProtocolTrouble(f"expected welcome, got {first_frame!r:.200}")
            await self._welcomed(frame)
            was_up = True
            while True:
                frame = _decode(await ws.recv())
                if frame is not None:
                    await self._on_frame(frame)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else ABNORMAL
        except _ProtocolTrouble as trouble:
            log.warning("tether_client: %s", trouble)
            ws.transport.abort()
            code = ABNORMAL
        except BaseException:
            # A failure of ours (or a cancellation): leave no socket open behind us.
            ws.transport.abort()
            raise
        finally:
            self._teardown()
        if self._gave_up is not None:
            code = self._gave_up
        return code, was_up

    async def _welcomed(self, frame: dict[str, Any]) -> None:
        self.welcome = frame
        self.generation += 1
        now = time.monotonic()
        self._up_since = self._last_heard = self._last_sent = now
        self._clock_offset = float(frame.get("server_time") or _now_ms()) - _now_ms()
        self.expires_at = frame.get("expires_at")
        self.spawn(self._heartbeat(frame.get("heartbeat") or {}), per_connection=True)
        if self.credentials.get_token is not None and self.expires_at:
            self.spawn(self._refresher(), per_connection=True)
        # Resume (chat's `sync`, stream's re-subscriptions) goes out before anything
        # the application sends, which waits for `ready`.
        for hook in self.on_welcome:
            await hook(frame)
        self._ready.set()
        if not self.resume_gate:
            self._resumed.set()
        self._set_state("connected", node=frame.get("node"), user=frame.get("user"))
        self.hub.emit("welcome", frame)
        for hook in self.on_ready:
            await hook(frame)

    def _teardown(self) -> None:
        was_up = self.welcome is not None
        self._ready.clear()
        self._resumed.clear()
        self._ws = None
        for task in list(self._conn_tasks):
            task.cancel()
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(Disconnected(detail="the socket closed"))
        self._pending.clear()
        self.welcome = None
        if was_up:
            self.hub.emit("disconnect", {})

    def _give_up(self, code: int) -> None:
        ws = self._ws
        if ws is None:
            return
        self._gave_up = code
        # Abort, not close: a dead peer never answers a closing handshake.
        ws.transport.abort()

    # --- frames -----------------------------------------------------------------

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        self._last_heard = time.monotonic()
        kind = frame.get("type")
        if kind == "ping":
            await self.send_frame({"type": "pong"})
            return
        if kind == "pong" and isinstance(frame.get("ts"), int | float):
            self.hub.emit(
                "pong",
                {
                    "rtt": _now_ms() - frame["ts"],
                    "load": frame.get("load"),
                    "server_time": frame.get("server_time"),
                },
            )
        request_id = frame.get("id")
        waiting = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
        if waiting is not None and not waiting[0].done():
            future, on_reply = waiting
            if kind == "error":
                future.set_exception(from_frame(frame))
            else:
                if on_reply is not None:
                    # Before the next frame is read: a `pub` right after `subscribed`
                    # must find its subscription active.
                    on_reply(frame)
                future.set_result(frame)
        elif kind == "error":
            self.hub.emit("error", frame)
        await self.dispatch(frame)

    async def send_frame(self, frame: dict[str, Any]) -> bool:
        """Send one frame if a socket is open; False otherwise (nothing is queued here)."""
        ws = self._ws
        if ws is None or self.welcome is None:
            return False
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        self._last_sent = time.monotonic()
        return True

    async def start_request(
        self, frame: dict[str, Any], on_reply: ReplyHook | None = None
    ) -> asyncio.Future:
        """Send a frame with an `id` (a fresh one unless it has one); the future of the
        reply carrying it. `on_reply` runs on a successful reply as soon as it is read.
        Raises Disconnected when it could not be sent."""
        request_id = frame.get("id") or f"r{next(self._ids)}"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_reply)
        if not await self.send_frame({**frame, "id": request_id}):
            self._pending.pop(request_id, None)
            raise Disconnected(detail="not connected")
        return future

    async def request(
        self,
        frame: dict[str, Any],
        timeout: float | None = None,
        on_reply: ReplyHook | None = None,
    ) -> dict[str, Any]:
        """Send a frame and return the reply with its `id`; an `error` reply raises its
        typed error, a closed socket Disconnected, no reply in time RequestTimeout."""
        future = await self.start_request(frame, on_reply)
        try:
            return await asyncio.wait_for(future, timeout or self.request_timeout)
        except TimeoutError:
            raise RequestTimeout(detail=f"no reply to {frame.get('type')}") from None

    # --- heartbeat and refresh ---------------------------------------------------------

    async def _heartbeat(self, heartbeat: dict[str, Any]) -> None:
        interval = float(heartbeat.get("interval") or 25)
        timeout = float(heartbeat.get("timeout") or 60)
        tick = min(1.0, interval / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - self._last_heard >= timeout:
                # The server went silent: the socket is probably dead behind a proxy.
                log.info("tether_client: nothing heard for %.0f s; reconnecting", timeout)
                self._give_up(CLIENT_GAVE_UP)
                return
            if now - self._last_sent >= interval:
                await self.send_frame({"type": "ping", "ts": int(_now_ms())})

    async def _refresher(self) -> None:
        while self.expires_at:
            left = (self.expires_at - (_now_ms() + self._clock_offset)) / 1000
            if left <= 0:
                return  # the server closes with 4401; the reconnect asks for a new token
            # A third of the life left, at most `refresh_before`: time for get_token().
            await asyncio.sleep(max(0.0, left - min(self.refresh_before, left / 3)))
            try:
                token = await self.credentials.fresh_token()
                reply = await self.request({"type": "refresh", "token": token})
            except Disconnected:
                return
            except Exception as failure:
                # The socket lives until its credential ends: try again meanwhile.
                self.hub.emit("refresh_failed", {"error": failure})
                await asyncio.sleep(REFRESH_RETRY)
                continue
            renewed = (reply.get("data") or {}).get("expires_at")
            if not renewed or renewed <= self.expires_at:
                # get_token() gave no later expiry (a cached token?): ask again later.
                self.hub.emit("refresh_failed", {"error": None, "expires_at": renewed})
                await asyncio.sleep(REFRESH_RETRY)
                continue
            self.expires_at = renewed
            self.hub.emit("refreshed", {"expires_at": renewed})


async def _ignore(frame: dict[str, Any]) -> None:
    pass


class _ProtocolTrouble(Exception):
    pass


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    try:
        frame = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        return None
    return frame


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("tether_client: task %s failed", task.get_name(), exc_info=task.exception())
