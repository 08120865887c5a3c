"""Real Redis and PostgreSQL servers for integration tests.

Policy: use REDIS_URL / DATABASE_URL when set; otherwise start throwaway
servers from locally installed binaries; otherwise skip (or fail when
REQUIRE_SERVICES=1) with a loud, specific reason.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServiceUnavailable",
    "free_port",
    "postgres_service",
    "redis_service",
    "require_or_skip",
    "rerun_on_postgresql",
]

REDIS_START_TIMEOUT = 10.0
PG_START_TIMEOUT = 30
POLL_INTERVAL = 0.02
# A port picked by free_port() can be grabbed by someone else before the
# server binds it; a couple of retries with a fresh port makes that harmless.
PORT_RETRIES = 3

REDIS_CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server")
PG_LIB_GLOB = "/usr/lib/postgresql/*/bin"


class ServiceUnavailable(Exception):
    """A required backing service could not be provided; str() says why and how to fix it."""


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class _Startable(Protocol):
    def start(self) -> object: ...


# Servers still running; stopped by atexit if pytest dies before teardown.
_LIVE: list[_Stoppable] = []


@atexit.register
def _stop_everything() -> None:
    """Stop every server still registered (last-resort cleanup)."""
    for server in list(reversed(_LIVE)):
        with contextlib.suppress(Exception):
            server.stop()


def free_port() -> int:
    """Return a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mask(url: str) -> str:
    """Return url with any password replaced, so reasons can be printed safely."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _describe(exc: BaseException) -> str:
    """Return 'Type: message' (redis-py 8's repr hides the message)."""
    return f"{type(exc).__name__}: {exc}"


def _tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file for error messages (never raises)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------- Redis


def _find_redis_server() -> str | None:
    """Return the path of a redis-server binary, or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in REDIS_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class RedisServer:
    """A Redis server: the one in REDIS_URL, or a throwaway redis-server we own."""

    def __init__(self, own: bool = False) -> None:
        # own: always a throwaway server, even with REDIS_URL set (a test that
        # needs several distinct servers).
        self.own = own
        self.url: str = ""
        self.owned: bool = False
        self.port: int | None = None
        self._binary: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> redis.Redis:
        """Return a new sync redis-py client for this server."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> str:
        """Connect to REDIS_URL or start a throwaway server; return its URL."""
        env_url = "" if self.own else os.environ.get("REDIS_URL")
        if env_url:
            self.url, self.owned = env_url, False
            try:
                with self.client() as conn:
                    conn.ping()
            except redis.RedisError as exc:
                raise ServiceUnavailable(
                    f"Redis: REDIS_URL={_mask(env_url)} is set but PING failed: {_describe(exc)}. "
                    "Fix: start that server, correct REDIS_URL, or unset it to let the "
                    "tests start a throwaway redis-server."
                ) from exc
            return self.url

        self._binary = _find_redis_server()
        if self._binary is None:
            raise ServiceUnavailable(
                "Redis: REDIS_URL is not set and no redis-server binary was found "
                f"(searched PATH={os.environ.get('PATH', '')!r} "
                f"and {', '.join(REDIS_CANDIDATES)}). "
                "Fix: export REDIS_URL=redis://host:6379/15 (a db the tests may flush) "
                "or install redis-server (e.g. apt-get install redis-server)."
            )
        self._tmpdir = Path(tempfile.mkdtemp(prefix="tether-redis-"))
        self.owned = True
        _LIVE.append(self)
        try:
            errors: list[str] = []
            for _ in range(PORT_RETRIES):
                self.port = free_port()
                try:
                    self._spawn()
                    break
                except ServiceUnavailable as exc:
                    errors.append(str(exc))
                    # Only a lost port race is worth another try.
                    if "Address already in use" not in str(exc):
                        raise
            else:
                raise ServiceUnavailable("\n".join(errors))
        except BaseException:
            self.stop()
            raise
        return self.url

    def _spawn(self) -> None:
        """Run redis-server on self.port and wait until it answers PING."""
        assert self._binary and self._tmpdir and self.port
        log_path = self._tmpdir / "redis.log"
        cmd = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self._tmpdir),
        ]  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        with open(log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._tmpdir,
                    # Own session: a Ctrl-C aimed at pytest must not kill Redis
                    # before the fixture teardown runs.
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServiceUnavailable(
                    f"Redis: could not execute {cmd!r}: {_describe(exc)}"
                ) from exc
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        last_error: Exception | None = None
        conn = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1
        )
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise ServiceUnavailable(
                        f"Redis: throwaway {cmd!r} exited with code {self._proc.returncode} "
                        f"before answering PING. Log tail:\n{_tail(log_path)}\n"
                        "Fix: set REDIS_URL to a running server."
                    )
                try:
                    if conn.ping():
                        return
                except redis.RedisError as exc:
                    last_error = exc
                time.sleep(POLL_INTERVAL)
        finally:
            conn.close()
        self._kill_proc()
        raise ServiceUnavailable(
            f"Redis: throwaway {cmd!r} did not answer PING within {REDIS_START_TIMEOUT:.0f}s "
            f"(last error: {last_error and _describe(last_error)}). Log tail:\n{_tail(log_path)}\n"
            "Fix: set REDIS_URL to a running server."
        )

    def _kill_proc(self) -> None:
        """Terminate our redis-server, escalating to SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def flushall(self) -> None:
        """Empty the server (only the URL's db when it is not ours, to spare shared servers)."""
        with self.client() as conn:
            if self.owned:
                conn.flushall()
            else:
                # REDIS_URL may point at a shared server: only wipe the db we were given.
                conn.flushdb()

    def restart(self) -> None:
        """Stop and start our own server on the same port (all data is lost)."""
        if not self.owned:
            raise RuntimeError(
                "RedisServer.restart() needs a throwaway server; "
                f"REDIS_URL={_mask(self.url)} is external."
            )
        self._kill_proc()
        self._spawn()

    def stop(self) -> None:
        """Stop the server if we own it and remove its files; idempotent."""
        self._kill_proc()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self in _LIVE:
            _LIVE.remove(self)


# ---------------------------------------------------------------- PostgreSQL


def _is_postgres_url(url: str) -> bool:
    """True for postgres://, postgresql:// and postgresql+driver:// URLs."""
    return urlsplit(url).scheme.split("+")[0] in ("postgres", "postgresql")


def _libpq_url(url: str) -> str:
    """Strip a SQLAlchemy-style '+driver' suffix that libpq does not understand."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql")) if "+" in parts.scheme else url


def _with_dbname(url: str, dbname: str) -> str:
    """Return url pointing at another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


def _version_key(bindir: str) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin: numeric version."""
    version = Path(bindir).parent.name
    return tuple(int(n) for n in re.findall(r"\d+", version)) or (0,)


def _find_pg_bins() -> tuple[str, str] | None:
    """Return (initdb, pg_ctl) from PATH, else from the highest /usr/lib/postgresql/*/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for bindir in sorted(glob.glob(PG_LIB_GLOB), key=_version_key, reverse=True):
        initdb, pg_ctl = os.path.join(bindir, "initdb"), os.path.join(bindir, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def unprivileged() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a server as an unprivileged user when we are root
    (PostgreSQL and PgBouncer refuse root), and that user; ([], None) otherwise."""
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
    )
    owner: pwd.struct_passwd | None = None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            owner = pwd.getpwnam(name)
            break
    if runuser is None or owner is None:
        raise ServiceUnavailable(
            f"running as root needs `runuser` and a 'postgres' or 'nobody' user "
            f"(runuser={runuser}, user={owner})."
        )
    return [runuser, "-u", owner.pw_name, "--"], owner


class PostgresServer:
    """A fresh PostgreSQL database: on DATABASE_URL's server, or in a throwaway cluster."""

    def __init__(self, own: bool = False) -> None:
        # own: always a throwaway server, even with REDIS_URL set (a test that
        # needs several distinct servers).
        self.own = own
        self.url: str = ""
        self.owned: bool = False  # True when we run the whole cluster
        self.port: int | None = None
        self._admin_url: str | None = None  # where to DROP our database from
        self._created_db: str | None = None
        self._pg_ctl: str | None = None
        self._base: Path | None = None
        self._prefix: list[str] = []  # runuser wrapper when running as root
        self._started = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Provide a fresh database and return a URL for it."""
        env_url = os.environ.get("DATABASE_URL", "")
        if env_url and _is_postgres_url(env_url):
            return self._start_external(_libpq_url(env_url))
        return self._start_throwaway(env_url)

    def _start_external(self, env_url: str) -> str:
        """CREATE DATABASE tether_test_<hex> on DATABASE_URL's server (or reuse its db)."""
        dbname = f"tether_test_{secrets.token_hex(6)}"
        try:
            with psycopg.connect(env_url, autocommit=True, connect_timeout=10) as conn:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                except psycopg.errors.InsufficientPrivilege as exc:
                    # A role without CREATEDB can still run the tests in its own db.
                    sys.stderr.write(
                        f"[tests.support.services] cannot CREATE DATABASE on {_mask(env_url)} "
                        f"({exc}); using that database as is.\n"
                    )
                    self.url = env_url
                    return self.url
        except psycopg.Error as exc:
            raise ServiceUnavailable(
                f"PostgreSQL: DATABASE_URL={_mask(env_url)} is set but connecting/creating "
                f"a test database failed: {_describe(exc)}. Fix: start that server, correct "
                "DATABASE_URL (role needs CREATEDB), or unset it to let the tests start "
                "a throwaway cluster."
            ) from exc
        self._admin_url, self._created_db = env_url, dbname
        _LIVE.append(self)
        self.url = _with_dbname(env_url, dbname)
        return self.url

    def _start_throwaway(self, env_url: str) -> str:
        """initdb + pg_ctl start a private cluster on a free port; return its URL."""
        why_not_env = (
            f"DATABASE_URL={_mask(env_url)!r} is not a postgres URL"
            if env_url
            else "DATABASE_URL is not set"
        )
        fix = (
            "Fix: export DATABASE_URL=postgresql://user:pass@host:5432/db (role with "
            "CREATEDB) or install the PostgreSQL server binaries (e.g. apt-get install postgresql)."
        )
        bins = _find_pg_bins()
        if bins is None:
            raise ServiceUnavailable(
                f"PostgreSQL: {why_not_env} and no initdb/pg_ctl pair was found "
                f"(searched PATH={os.environ.get('PATH', '')!r} and {PG_LIB_GLOB}). {fix}"
            )
        initdb, self._pg_ctl = bins

        try:
            self._prefix, owner = unprivileged()
        except ServiceUnavailable as exc:
            raise ServiceUnavailable(f"PostgreSQL: {why_not_env}; {exc} {fix}") from None

        # Under /tmp when root: the unprivileged owner must be able to traverse the parent.
        self._base = Path(tempfile.mkdtemp(prefix="tether-pg-", dir="/tmp" if owner else None))
        self.owned = True
        _LIVE.append(self)
        try:
            return self._init_and_start(initdb, owner, why_not_env, fix)
        except BaseException:
            self.stop()
            raise

    def _run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool (as the unprivileged owner when root), capturing output."""
        return subprocess.run(
            [*self._prefix, *cmd],
            cwd=self._base,  # the owner may not be able to read the caller's cwd
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _init_and_start(
        self, initdb: str, owner: pwd.struct_passwd | None, why_not_env: str, fix: str
    ) -> str:
        """Create the cluster, start it (retrying lost port races) and create db 'tether'."""
        assert self._base and self._pg_ctl
        data, sockdir, log = (
            self._base / "data",
            self._base / "sock",
            self._base / "postgres.log",
        )
        sockdir.mkdir()
        if owner is not None:
            os.chmod(self._base, 0o755)
            for path in (self._base, sockdir):
                os.chown(path, owner.pw_uid, owner.pw_gid)

        help_text = self._run([initdb, "--help"], timeout=30).stdout
        cmd = [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        # --no-locale: deterministic and independent of the caller's (maybe missing) locale.
        cmd += ["--no-sync", "--no-locale"]
        if "--no-instructions" in help_text:
            cmd.append("--no-instructions")
        res = self._run(cmd, timeout=120)
        if res.returncode != 0:
            raise ServiceUnavailable(
                f"PostgreSQL: {why_not_env}; throwaway `{' '.join(self._prefix + cmd)}` failed "
                f"(exit {res.returncode}):\n{(res.stdout + res.stderr).strip()[-2000:]}\n{fix}"
            )

        errors: list[str] = []
        for _ in range(PORT_RETRIES):
            self.port = free_port()
            opts = (
                f"-p {self.port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            start = [self._pg_ctl, "-w", "-t", str(PG_START_TIMEOUT), "-D", str(data)]
            start += ["-l", str(log), "-o", opts, "start"]
            res = self._run(start, timeout=PG_START_TIMEOUT + 10)
            if res.returncode == 0:
                self._started = True
                break
            errors.append(
                f"`{' '.join(self._prefix + start)}` failed (exit {res.returncode}): "
                f"{(res.stdout + res.stderr).strip()[-1000:]}\nServer log tail:\n{_tail(log)}"
            )
            # Only a lost port race is worth another try.
            if "could not bind" not in _tail(log, 50) and "already in use" not in _tail(log, 50):
                break
            log.unlink(missing_ok=True)
        if not self._started:
            raise ServiceUnavailable(
                f"PostgreSQL: {why_not_env}; throwaway cluster did not start:\n"
                + "\n".join(errors)
                + f"\n{fix}"
            )

        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute("CREATE DATABASE tether")
        except psycopg.Error as exc:
            raise ServiceUnavailable(
                f"PostgreSQL: throwaway cluster started but CREATE DATABASE tether failed: "
                f"{_describe(exc)}. Log tail:\n{_tail(log)}\n{fix}"
            ) from exc
        self.url = _with_dbname(admin, "tether")
        return self.url

    def stop(self) -> None:
        """Drop our database / stop our cluster and delete its files; idempotent."""
        if self._created_db and self._admin_url:
            dbname, self._created_db = self._created_db, None
            drop = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname))
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(self._admin_url, autocommit=True, connect_timeout=10) as conn,
            ):
                if conn.info.server_version >= 130000:
                    # FORCE: leftover test connections must not keep the db alive.
                    conn.execute(drop + sql.SQL(" WITH (FORCE)"))
                else:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (dbname,),
                    )
                    conn.execute(drop)
        if self._started and self._base and self._pg_ctl:
            self._started = False
            data = self._base / "data"
            returncode = 1
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                stop = [self._pg_ctl, "-D", str(data), "-m", "immediate", "stop"]
                returncode = self._run(stop, timeout=30).returncode
            if returncode != 0:
                self._kill_postmaster(data)
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        if self in _LIVE:
            _LIVE.remove(self)

    @staticmethod
    def _kill_postmaster(data: Path) -> None:
        """Fallback when pg_ctl stop fails: SIGKILL the postmaster named in postmaster.pid."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------ pytest helpers

_config: pytest.Config | None = None  # set by the fixtures so banners bypass capture


def require_or_skip(reason: str) -> NoReturn:
    """Skip (or fail when REQUIRE_SERVICES=1) with a loud reason, also printed to stderr."""
    required = os.environ.get("REQUIRE_SERVICES") == "1"
    verdict = (
        "FAILING (REQUIRE_SERVICES=1)" if required else "SKIPPING (set REQUIRE_SERVICES=1 to fail)"
    )
    bar = "!" * 78
    banner = f"\n{bar}\n!! SERVICE UNAVAILABLE -- {verdict}\n{reason}\n{bar}\n"
    capman = _config.pluginmanager.getplugin("capturemanager") if _config else None
    # Captured output of a skipped test is never shown, so print past the capture.
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        sys.stderr.write(banner)
        sys.stderr.flush()
    if required:
        pytest.fail(reason, pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {reason}")


def start_or_skip(server: _Startable) -> None:
    """`server.start()`, or skip (fail with REQUIRE_SERVICES=1) loudly saying why."""
    try:
        server.start()
    except ServiceUnavailable as exc:
        reason = str(exc)
    else:
        return
    # Outside the except block, so the report does not repeat the chained error.
    require_or_skip(reason)


@pytest.fixture(scope="session")
def redis_service(pytestconfig: pytest.Config) -> Iterator[RedisServer]:
    """A running Redis for the whole session (skip/fail loudly if impossible)."""
    global _config
    _config = pytestconfig
    server = RedisServer()
    start_or_skip(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_service(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL database for the whole session (skip/fail loudly if impossible)."""
    global _config
    _config = pytestconfig
    server = PostgresServer()
    start_or_skip(server)
    try:
        yield server
    finally:
        server.stop()


def rerun_on_postgresql(path: str, postgres: PostgresServer, keyword: str) -> None:
    """Run the tests of `path` matching `keyword` again, in a pytest of their own with
    DATABASE_URL on `postgres`: raw SQL takes another path there (arrays, bound
    parameters), and settings pick the database once per process."""
    env = {**os.environ, "DATABASE_URL": postgres.url}
    inner = ["-q", "-p", "no:cacheprovider", path, "-k", keyword]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *inner],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
