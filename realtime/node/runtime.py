"""The node runtime: one per process. Tracks local sockets, runs the heartbeat
sweeper, refreshes the node record and reaps nodes that went silent.

One sweeper walks every local connection once a second instead of a timer per
connection (docs/architecture.md, rule 4).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from django.conf import settings

from monitoring import metrics
from monitoring.stats import NodeStats
from realtime.node import collector, control, registry
from realtime.node.connection import Connection
from realtime.node.db import in_pool, server_max_connections
from realtime.node.hub import Hub
from realtime.protocol import Close, now_ms

log = logging.getLogger("tether.runtime")

# Upper bound on closing every socket at SIGTERM before the node's records go.
DRAIN_SECONDS = 10.0
# Upper bound on the stop after the drain: leaving the hub's groups and removing
# the node's records. What is left then goes the way a crashed node's does (the
# other nodes' reapers, or this node's next start).
STOP_SECONDS = 5.0
# After that under daphne, how long the process may take to exit before it exits
# anyway (`exit_after_drain`).
EXIT_GRACE_SECONDS = 5.0
# From SIGTERM to the process's exit, at most (docs/deployment.md, section 9):
# what a supervisor's stop timeout must exceed.
SHUTDOWN_BOUND_SECONDS = DRAIN_SECONDS + STOP_SECONDS + EXIT_GRACE_SECONDS


class NodePart(Protocol):
    """What a domain runs on every node (chat, topics), added by realtime/apps.py: the
    runtime knows no domain (docs/architecture.md, "The house")."""

    def start(self, runtime: NodeRuntime) -> None:
        """At every start (once per event loop): hub handlers, fresh per-node state."""

    async def maintain(self, runtime: NodeRuntime) -> None:
        """Each maintenance pass, after the heartbeat and the reaper."""

    async def recheck_users(self, user_ids: Iterable[int]) -> None:
        """These users' sockets ended without their own cleanup (a reaped node, this
        node's previous run, an operator's cleanup): re-evaluate what rests on them."""

    def sizes(self) -> dict[str, int]:
        """What the part keeps per node (the node's figures; each must stay bounded)."""


class NodeRuntime:
    """Local connections and the background tasks of this node."""

    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        # Sockets recorded but not yet open: control messages for them wait until
        # they are (TetherConsumer.open_connection), none is dropped.
        self.opening: dict[str, Connection] = {}
        self.draining = False
        self.node_id: int | None = None
        self.name: str = ""
        self.loop_lag: float = 0.0
        self.stats = NodeStats()
        self.hub_depth = 0  # read by metrics from another thread: kept current by the sweeper
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._start_lock: asyncio.Lock | None = None
        self._shutdown_hooked = False
        self._pending: set[asyncio.Task[Any]] = set()
        self.hub = Hub()
        # The last maintenance pass's figures (published on `ops:stats` by topics).
        self.last_stats: dict[str, Any] | None = None
        # PostgreSQL's max_connections, read at start (the connection alert's bound).
        self.db_max_connections: int | None = None

    @property
    def started(self) -> bool:
        return self.node_id is not None and self._loop is asyncio.get_running_loop()

    async def ensure_started(self) -> None:
        """Register the node and start the background tasks, once per event loop."""
        if self.started:
            return
        loop = asyncio.get_running_loop()
        if self._start_lock is None or self._loop is not loop:
            # A new loop (tests run one per test): forget the old loop's state.
            self._start_lock = asyncio.Lock()
            self._loop = loop
            self.node_id = None
            self.draining = False
            self.connections.clear()
            self.opening.clear()
            self._tasks = []
        if self.draining:
            # Stopping (SIGTERM): a request that arrives while the node drains, or
            # after its records are gone, must not register it again. A node that
            # did kept its hub, sweeper and a node row alive past the drain, and
            # the process did not exit (under load through nginx, whose
            # least_conn sends reconnects to the node that just emptied).
            return
        async with self._start_lock:
            if self.node_id is not None or self.draining:
                return
            self.name = settings.NODE_NAME
            self.stats = NodeStats()
            self.last_stats = None
            node, stale_users = await registry.register_node(self.name)
            self.db_max_connections = await in_pool(server_max_connections)()
            self.hub = Hub()
            await self.hub.start()
            control.install(self.hub, self.local)
            self._tasks = []
            for part in _parts:
                part.start(self)
            self.node_id = node.id
            await self.recheck_users(stale_users)  # their sockets died with our previous run
            self.run_in_background(self._sweep_forever(), "tether-sweeper")
            self.run_in_background(self._maintain_forever(), "tether-maintenance")
            self._hook_daphne_shutdown()
            _tune_interpreter()
            log.info("node %s started", self.name)

    async def stop(self) -> None:
        """Cancel the background tasks and remove the node's records."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.hub.stop()
        if self.node_id is not None:
            await registry.unregister_node(self.name)
        self.node_id = None
        self.connections.clear()
        self.opening.clear()

    async def shutdown(self) -> None:
        """Drain (SIGTERM): refuse new sockets, close every local one with 1012 so
        clients resume on another node, remove the records; bounded by DRAIN_SECONDS
        and STOP_SECONDS, each phase's time logged."""
        self.draining = True
        conns = list(self.connections.values())
        if conns:
            log.info("node %s draining: closing %d sockets with 1012", self.name, len(conns))
            started = time.monotonic()
            closing = asyncio.gather(
                *(conn.close(Close.RESTART) for conn in conns), return_exceptions=True
            )
            try:
                await asyncio.wait_for(closing, DRAIN_SECONDS)
            except TimeoutError:
                # Whatever is left goes with the node row (its records cascade).
                log.warning(
                    "node %s: drain took over %.0fs; removing the rest", self.name, DRAIN_SECONDS
                )
            else:
                log.info(
                    "node %s: %d sockets closed in %.2fs",
                    self.name,
                    len(conns),
                    time.monotonic() - started,
                )
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.stop(), STOP_SECONDS)
        except TimeoutError:
            log.warning(
                "node %s: stopping took over %.0fs; its records are left to the reapers",
                self.name,
                STOP_SECONDS,
            )
        else:
            log.info("node %s: stopped in %.2fs", self.name, time.monotonic() - started)

    async def _stop_logged(self) -> None:
        try:
            await self.shutdown()
        except BaseException:
            log.exception("node %s: shutdown cleanup failed", self.name)
            raise
        log.info("node %s records removed", self.name)

    def _hook_daphne_shutdown(self) -> None:
        """Under daphne, remove this node's records when the reactor stops."""
        if self._shutdown_hooked:
            return
        try:
            from twisted.internet import defer, reactor
        except ImportError:
            return
        if not reactor.running:
            log.debug("twisted reactor not running: no shutdown hook")
            return

        def on_shutdown() -> Any:
            # "before", like daphne's own cancelling of the consumers: by the
            # "during" phase the asyncio loop is stopping and would never finish this.
            log.info("node %s shutting down: removing its records", self.name)
            stopping = asyncio.ensure_future(self._stop_logged())
            stopping.add_done_callback(lambda _: exit_after_drain(self.name))
            return defer.Deferred.fromFuture(stopping)

        reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
        self._shutdown_hooked = True

    def run_in_background(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """A task that lives as long as the node (cancelled by `stop`)."""
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def recheck_users(self, user_ids: Iterable[int]) -> None:
        """See `NodePart.recheck_users`."""
        ids = list(user_ids)
        if ids:
            for part in _parts:
                await part.recheck_users(ids)

    def part_sizes(self) -> dict[str, int]:
        """Every part's `sizes`, for the node's figures."""
        return {name: n for part in _parts for name, n in part.sizes().items()}

    # --- local connections -------------------------------------------------

    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn

    def local(self, connection_id: str) -> Connection | None:
        """A socket of this node, open or opening (for its control messages)."""
        return self.connections.get(connection_id) or self.opening.get(connection_id)

    def discard(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)

    def load(self) -> float:
        """How busy the node is, in [0, 1]: connections against the limit, loop lag."""
        by_connections = len(self.connections) / max(1, settings.MAX_CONNECTIONS)
        by_lag = self.loop_lag / 1.0  # a second of lag is fully loaded
        return round(min(1.0, max(by_connections, by_lag)), 3)

    # --- background tasks --------------------------------------------------

    async def _sweep_forever(self) -> None:
        period = settings.TETHER_SWEEP_SECONDS
        expected = time.monotonic() + period
        while True:
            await asyncio.sleep(max(0.0, expected - time.monotonic()))
            now = time.monotonic()
            self.loop_lag = max(0.0, now - expected)
            self.hub_depth = self.hub.queue_depth()
            expected = now + period
            try:
                await self.sweep(now)
            except Exception:
                log.exception("heartbeat sweep failed")

    async def sweep(self, now: float) -> None:
        """Ping quiet sockets, close silent ones with 4408 and those whose credential
        expired with 4401 (PROTOCOL 11)."""
        interval = settings.HEARTBEAT_INTERVAL
        timeout = settings.PING_TIMEOUT
        wall = now_ms()
        for conn in list(self.connections.values()):
            if conn.closing:
                continue
            if conn.expires_at is not None and wall >= conn.expires_at:
                log.info("connection %s: its credential expired; closing 4401", conn.id)
                self.spawn(conn.close(Close.UNAUTHENTICATED))
                continue
            if now - conn.last_in >= timeout:
                log.info(
                    "connection %s silent for %.1fs: closing 4408", conn.id, now - conn.last_in
                )
                metrics.HEARTBEAT_TIMEOUTS.inc()
                self.spawn(conn.close(Close.HEARTBEAT_TIMEOUT))
            elif now - conn.last_out >= interval:
                self.spawn(conn.send_frame({"type": "ping", "server_time": now_ms()}))

    def spawn(self, coro: Any) -> None:
        """Run a per-connection action without letting one slow socket hold the sweep."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _maintain_forever(self) -> None:
        period = settings.TETHER_MAINTENANCE_SECONDS
        while True:
            await asyncio.sleep(period)
            try:
                await self.maintain()
            except Exception:
                log.exception("node maintenance failed")

    async def maintain(self) -> None:
        """Node heartbeat, batched `last_seen`, and the reaper."""
        if self.node_id is None:
            return
        seen = [c for c in self.connections.values() if c.last_in > c.last_flushed_in]
        stats = self.stats.snapshot(list(self.connections.values()), self.loop_lag)
        stats["resources"] = collector.node_resources(self)
        # The liveness rule, for the /ops/ page that draws these figures.
        stats["silent_after_ms"] = int(registry.silent_after().total_seconds() * 1000)
        updated = await registry.node_heartbeat(
            self.node_id, [c.id for c in seen], len(self.connections), stats
        )
        self.last_stats = stats
        for conn in seen:
            conn.last_flushed_in = conn.last_in
        if not updated:
            # Another node reaped us (we were silent too long): register again
            # and re-record our sockets so operators and limits see them.
            log.warning("node %s record was reaped; registering again", self.name)
            await self._reregister()
        reaped = await in_pool(registry.reap_silent_nodes)(registry.reap_after())
        await self.recheck_users(reaped.user_ids)
        for part in _parts:
            await part.maintain(self)
        for job in list(_maintenance_jobs):
            try:
                await in_pool(job)()
            except Exception:
                log.exception("maintenance job %s failed", getattr(job, "__qualname__", job))

    async def _reregister(self) -> None:
        node, _ = await registry.register_node(self.name)
        self.node_id = node.id
        for conn in list(self.connections.values()):
            await registry.add_connection(conn.info, node.id)
        # They were announced offline when the record went.
        await self.recheck_users({conn.user_id for conn in self.connections.values()})


_runtime = NodeRuntime()


def get_runtime() -> NodeRuntime:
    """This process's node runtime."""
    return _runtime


# The domains' work on every node (realtime/apps.py adds chat's and topics').
_parts: list[NodePart] = []


def add_part(part: NodePart) -> None:
    """Run `part` on this node from its next start (once, however often added)."""
    if part not in _parts:
        _parts.append(part)


# Work other apps add to every maintenance pass, each run on a pool thread: the
# node's periodic chores without the node importing them (docs/architecture.md).
_maintenance_jobs: list[Callable[[], Any]] = []


def on_maintenance(job: Callable[[], Any]) -> None:
    """Run the sync callable `job` on each maintenance pass (once, however often added)."""
    if job not in _maintenance_jobs:
        _maintenance_jobs.append(job)


_heap_frozen = False
GIL_SWITCH_SECONDS = 0.001
# Collections of the middle generation between two full ones, at least (Python's default: 10).
FULL_COLLECTION_EVERY = 100


def _tune_interpreter() -> None:
    """Once per process: move what start-up allocated (Django, the app registry,
    modules: most of the heap) out of the cyclic collector's reach, run full
    collections less often, and switch threads sooner.

    Full collections of that heap paused a busy node for 60 to 170 ms a few times a
    minute: the tail of send→delivery at 1,000 msg/s (docs/benchmarks.md, "Chat"). What is allocated
    later is still collected as usual."""
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()
    # Sockets opening by the thousand (a reconnect storm) grow the heap steadily,
    # and Python runs a full collection each time it grew by a quarter: 7 of
    # them, 160 ms each, in a ramp to 5,000 sockets, a sixth of the node's time
    # (docs/benchmarks.md, accepts per second). Garbage cycles are still collected: young
    # ones as before, old ones at the next full collection, which now comes
    # after 100 collections of the middle generation (about 700,000 net
    # allocations of tracked objects) rather than 10.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    # A pool thread whose database reply has arrived waits for the event loop's
    # thread to hand over the GIL, up to the switch interval each time (5 ms by
    # default), and a batch of sends waits for the database twice.
    # 1 ms: about 3 ms less per batch at 1,000 msg/s, and a shorter tail.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


def exit_after_drain(name: str, grace: float = EXIT_GRACE_SECONDS) -> None:
    """Under daphne, once the drain is done: exit within `grace` seconds whatever
    still runs.

    An HTTP request that daphne's stop catches half-way can leave its worker
    thread waiting for the event loop, which has stopped; Python waits for that
    thread at exit, for ever, until systemd's or the kubelet's SIGKILL (seen in a
    rolling restart under load through nginx: a POST arriving on a kept-alive
    connection as the node stopped). The sockets are closed and the records gone
    by now; the request's client gets a 502 from nginx, as from a node killed.
    """

    def watchdog() -> None:
        time.sleep(grace)
        others = [
            t.name
            for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread() and t.is_alive()
        ]
        log.warning(
            "node %s: exit held %.0f s after the drain by %d threads (%s); exiting",
            name,
            grace,
            len(others),
            ", ".join(others[:5]),
        )
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watchdog, name="tether-exit-watchdog", daemon=True).start()


class NodeStartMiddleware:
    """Start the node runtime on the first ASGI call (daphne has no lifespan); under
    servers with lifespan events (uvicorn) also at startup, and drain at shutdown."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] in ("http", "websocket") and not _runtime.started:
            try:
                await _runtime.ensure_started()
            except Exception:
                # Database down: keep serving /health/ and /ready/ (which says
                # what failed); sockets are refused with 1011 and retry later.
                log.exception("node runtime could not start; will retry")
        return await self.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await _runtime.ensure_started()
                except Exception:
                    log.exception("node runtime could not start; will retry on first request")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _runtime.started:
                    await _runtime._stop_logged()
                await send({"type": "lifespan.shutdown.complete"})
                return


# Last: scraping reads the runtime and its parts, all defined by now.
collector.register(get_runtime)
