"""Debian's PgBouncer in transaction mode in front of the tests' PostgreSQL, as a
deployment behind a pooler runs (docs/deployment.md, "PostgreSQL behind PgBouncer").

Started from PATH (or /usr/sbin/pgbouncer); skipped loudly when absent, failing
instead when REQUIRE_SERVICES=1, like every other service of the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support.services import (
    PostgresServer,
    ServiceUnavailable,
    free_port,
    start_or_skip,
    unprivileged,
)

START_TIMEOUT = 20.0


def _binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


class PgBouncer:
    """One PgBouncer process, `pool_mode = transaction`, forwarding every database
    name to the PostgreSQL server of `upstream_url`."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream = urlsplit(upstream_url)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    def url_for(self, database_url: str) -> str:
        """`database_url` (on the upstream server) reached through this PgBouncer."""
        parts = urlsplit(database_url)
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{self.port}"))

    def start(self) -> PgBouncer:
        binary = _binary()
        if binary is None:
            raise ServiceUnavailable(
                "PgBouncer: no `pgbouncer` on PATH or at /usr/sbin/pgbouncer. "
                "Fix: apt-get install pgbouncer."
            )
        prefix, owner = unprivileged()  # PgBouncer refuses to run as root
        self._dir = Path(tempfile.mkdtemp(prefix="tether-pgbouncer-", dir="/tmp"))
        self.port = free_port()
        user = self.upstream.username or "postgres"
        password = self.upstream.password or ""
        (self._dir / "users.txt").write_text(f'"{user}" "{password}"\n')
        (self._dir / "pgbouncer.ini").write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.upstream.hostname} port={self.upstream.port or 5432}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    # Loopback only, for the tests: the server checks its own auth.
                    "auth_type = trust",
                    f"auth_file = {self._dir / 'users.txt'}",
                    "pool_mode = transaction",
                    "max_client_conn = 1000",
                    "default_pool_size = 40",
                    f"logfile = {self._dir / 'pgbouncer.log'}",
                    f"pidfile = {self._dir / 'pgbouncer.pid'}",
                    "",
                ]
            )
        )
        if owner is not None:
            os.chmod(self._dir, 0o755)
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.proc = subprocess.Popen(
            [*prefix, binary, str(self._dir / "pgbouncer.ini")],
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        probe = self.url_for(urlunsplit(self.upstream))
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                with psycopg.connect(probe, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                last = exc
                time.sleep(0.1)  # polling a port that is not listening yet
        log = self._dir / "pgbouncer.log" if self._dir else None
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        self.stop()
        raise ServiceUnavailable(f"PgBouncer did not start ({last}); its log:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@pytest.fixture(scope="session")
def pgbouncer_service(postgres_service: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode before the session's PostgreSQL."""
    bouncer = PgBouncer(postgres_service.url)
    start_or_skip(bouncer)
    try:
        yield bouncer
    finally:
        bouncer.stop()
