"""A throwaway Redis Sentinel deployment: a master, a replica and three sentinels.

Started from the `redis-server` and `redis-sentinel` binaries on PATH, on free
loopback ports; the failover test kills the master and waits for the promotion.
Skipped loudly when a binary is missing (failed with REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support import services
from tests.support.services import ServiceUnavailable, free_port, start_or_skip

MASTER_NAME = "tether"
START_TIMEOUT = 20.0
# Sentinel settings the test relies on: a master silent for a second is down,
# and a stuck failover is retried after five.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll `check` until it holds; ServiceUnavailable naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(interval)
    raise ServiceUnavailable(f"Redis Sentinel: {what} within {timeout:g} s")


class _Process:
    """One redis-server or redis-sentinel process we own."""

    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class SentinelCluster:
    """Master + replica + three sentinels monitoring them as `tether` (quorum 2)."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.master: _Process | None = None
        self.replica: _Process | None = None
        self.sentinels: list[_Process] = []

    @property
    def sentinel_hosts(self) -> str:
        """`REDIS_SENTINELS` for the nodes."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> None:
        server, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
        if not server or not sentinel:
            raise ServiceUnavailable(
                "Redis Sentinel: redis-server and redis-sentinel must be on PATH "
                f"(found {server or 'no redis-server'}, {sentinel or 'no redis-sentinel'}). "
                "Fix: apt-get install redis-server redis-sentinel"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="tether-sentinel-"))
        services._LIVE.append(self)
        try:
            self._start(server, sentinel)
        except BaseException:
            self.stop()
            raise

    def _server(self, binary: str, name: str, *extra: str) -> _Process:
        assert self.dir is not None
        port = free_port()
        work = self.dir / name
        work.mkdir()
        cmd = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(work), *extra,
        ]  # fmt: skip
        process = _Process(cmd, port, self.dir / f"{name}.log")
        wait_for(f"{name} answering PING on {port}", lambda: bool(process.client().ping()), 10)
        return process

    def _start(self, server: str, sentinel: str) -> None:
        assert self.dir is not None
        self.master = self._server(server, "master")
        self.replica = self._server(
            server, "replica", "--replicaof", "127.0.0.1", str(self.master.port)
        )
        wait_for(
            "the replica in sync with the master",
            lambda: (
                self.replica is not None
                and self.replica.client().info("replication").get("master_link_status") == "up"
            ),
            START_TIMEOUT,
        )
        for index in range(3):
            port = free_port()
            conf = self.dir / f"sentinel{index}.conf"
            # Sentinel rewrites its configuration file: each needs its own, writable.
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            process = _Process([sentinel, str(conf)], port, self.dir / f"sentinel{index}.log")
            self.sentinels.append(process)
            wait_for(
                f"sentinel {index} answering PING", lambda p=process: bool(p.client().ping()), 10
            )
        # Every sentinel must know the replica and the other two, or a kill finds
        # no quorum or no one to promote.
        for process in self.sentinels:
            wait_for(
                "each sentinel seeing the replica and the other sentinels",
                lambda p=process: self._sees_everything(p),
                START_TIMEOUT,
            )

    def _sees_everything(self, process: _Process) -> bool:
        conn = process.client()
        master = conn.sentinel_master(MASTER_NAME)
        return int(master["num-slaves"]) >= 1 and int(master["num-other-sentinels"]) >= 2

    def master_port(self) -> int:
        """The master's port as a majority of the sentinels report it."""
        ports = []
        for process in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                _, port = process.client().sentinel_get_master_addr_by_name(MASTER_NAME)
                ports.append(int(port))
        return max(set(ports), key=ports.count)

    def cut_replication(self) -> None:
        """Stop the replica from receiving anything more from the master: writes
        from now on exist only on the master, as when replication lags behind.

        The link is dropped and the replica cannot come back (it now offers a
        password the master does not have), so a kill of the master afterwards
        surely loses those writes."""
        assert self.replica is not None
        with self.replica.client() as conn:
            conn.config_set("masterauth", "not-the-masters-password")
            conn.client_kill_filter(_type="master")
        wait_for(
            "the replica's link to the master down",
            lambda: (
                self.replica is not None
                and self.replica.client().info("replication").get("master_link_status") == "down"
            ),
            10,
        )

    def kill_master(self) -> None:
        """SIGKILL the current master: no shutdown, no last write reaches anyone."""
        assert self.master is not None
        self.master.stop(signal.SIGKILL)

    def wait_promoted(self, timeout: float) -> int:
        """Wait until the replica answers as master and every sentinel names it; its port."""
        assert self.replica is not None
        replica = self.replica

        def promoted() -> bool:
            if replica.client().info("replication").get("role") != "master":
                return False
            return all(
                int(p.client().sentinel_get_master_addr_by_name(MASTER_NAME)[1]) == replica.port
                for p in self.sentinels
            )

        wait_for("the replica promoted and named by every sentinel", promoted, timeout)
        return replica.port

    def log_tail(self, lines: int = 20) -> str:
        if self.dir is None:
            return ""
        out = []
        for log in sorted(self.dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.master]:
            if process is not None:
                process.stop()
        self.sentinels = []
        self.master = self.replica = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self in services._LIVE:
            services._LIVE.remove(self)


@pytest.fixture
def sentinel_cluster(pytestconfig: pytest.Config) -> Iterator[SentinelCluster]:
    """A fresh master, replica and three sentinels for one test."""
    services._config = pytestconfig
    cluster = SentinelCluster()
    start_or_skip(cluster)
    try:
        yield cluster
    finally:
        cluster.stop()
