"""Live daphne nodes on loopback ports for integration tests, in both modes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from realtime.node.runtime import SHUTDOWN_BOUND_SECONDS
from realtime.rest import quotas
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]
STAFF_PASSWORD = "an-Admin-passw0rd-long"
# Variables a developer's shell may carry that must not leak into a node.
# DEMO_FEED too: a node that publishes a tick every second of its own puts topic
# keys in Redis that tests of topic state count.
_SCRUB = (
    "DATABASE_URL",
    "REDIS_URL",
    "NODE_NAME",
    "ALLOWED_ORIGINS",
    "PORT",
    "HOST",
    "DEMO_FEED",
)


def node_env(**overrides: str) -> dict[str, str]:
    """A clean environment for manage.py / daphne with Tether settings set."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        {
            "SECRET_KEY": "tests-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
            "LOG_LEVEL": "INFO",
            # Tests log in far more often than a person; the throttle has its own tests.
            "AUTH_RATE_LIMIT": "100000/minute",
            # Every test socket comes from 127.0.0.1; the handshake bound has its own tests.
            "HANDSHAKE_RATE_PER_SECOND": "100000",
            "HANDSHAKE_BURST": "100000",
            # Test users do far more than people; the quotas have their own tests.
            **quotas.all_off(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def manage(
    env: dict[str, str], *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess:
    """Run `manage.py ARGS` against a node's database."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


class _From(urllib.request.HTTPHandler):
    """Connects from a chosen local address."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req: Any) -> Any:
        return self.do_open(
            lambda host, **kw: HTTPConnection(host, source_address=(self.source, 0), **kw), req
        )


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    source: str | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP request; (status, decoded JSON or text, headers). `source`: the local
    address to send from (any 127.x.y.z): a client address of the test's own, so
    per-address counts other tests left on a shared Redis do not reach it."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    opener = urllib.request.build_opener(_From(source)) if source else None
    try:
        with (opener.open if opener else urllib.request.urlopen)(
            request, timeout=timeout
        ) as response:
            status, raw, rheaders = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, raw, rheaders = error.code, error.read(), dict(error.headers)
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text), rheaders
    except ValueError:
        return status, text, rheaders


@dataclass
class Stack:
    """The shared backing services of one mode: a database URL, maybe a Redis URL."""

    mode: str
    database_url: str
    redis_url: str = ""
    migrated: bool = False
    # Settings every node and command of this stack needs (a pooler's, say).
    settings: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        extra = {"DATABASE_URL": self.database_url, **self.settings}
        if self.redis_url:
            extra["REDIS_URL"] = self.redis_url
        extra.update(overrides)
        return node_env(**extra)

    def migrate(self) -> None:
        if not self.migrated:
            manage(self.env(), "migrate", "--noinput")
            self.migrated = True

    def sql(self, query: str, *params: Any) -> list[tuple]:
        """Read (or, for tests that fake a state, write) the live database directly."""
        if self.database_url.startswith("sqlite"):
            path = self.database_url.split("sqlite:///", 1)[1]
            with sqlite3.connect(path, timeout=20) as conn:
                cursor = conn.execute(query.replace("%s", "?"), params)
                return cursor.fetchall() if cursor.description else []
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []


def processes_on(stack: Stack) -> list[str]:
    """Every process whose environment names this stack's database (pid and command):
    when a test sees rows handled by no process of its own, what else is running."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"DATABASE_URL={stack.database_url}".encode() in environ:
            found.append(f"{proc.name}: {cmdline.decode(errors='replace')[:200]}")
    return found


@dataclass
class DaphneNode:
    """One daphne process serving project.asgi on a free loopback port."""

    stack: Stack
    name: str
    log_dir: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    server: str = "daphne"  # or "uvicorn", the optional server
    # daphne's --proxy-headers, as deploy/tether@.service runs it behind nginx.
    proxy_headers: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, timeout: float = 30) -> DaphneNode:
        self.stack.migrate()
        self.port = self.port or free_port()
        env = self.stack.env(NODE_NAME=self.name, **self.settings)
        log = open(self.log_path, "ab")
        if self.server == "uvicorn":
            command = ["uvicorn", "project.asgi:application", "--host", "127.0.0.1"]
            command += ["--port", str(self.port), "--ws", "websockets-sansio", "--loop", "asyncio"]
        else:
            command = ["daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            command += ["--websocket_timeout", "-1"]
            command += ["--proxy-headers"] if self.proxy_headers else []
            command += ["project.asgi:application"]
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", *command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited early:\n{self.log_tail()}")
            try:
                status, _, _ = http("GET", self.url + "/health/", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)  # polling a port that is not open yet
        raise RuntimeError(f"node {self.name} not healthy in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(
        self, sig: int = signal.SIGTERM, timeout: float = SHUTDOWN_BOUND_SECONDS
    ) -> int | None:
        """Stop the process with `sig` (SIGKILL for a crash); its exit code. A node
        still running after the bound its SIGTERM promises is hung."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Hung: every thread's stack to the node's log first (daphne runs
                # with -X faulthandler, which dumps them on SIGABRT), then SIGKILL.
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    # --- conveniences for tests -------------------------------------------

    def register(self, username: str, password: str = "a-Long-test-passw0rd") -> str:
        """Sign a user up and return an API token for them."""
        status, body, _ = http(
            "POST", self.url + "/api/auth/register/", {"username": username, "password": password}
        )
        assert status in (201, 400), body
        status, body, _ = http(
            "POST", self.url + "/api/auth/token/", {"username": username, "password": password}
        )
        assert status == 200, body
        return body["token"]

    def create_group(self, token: str, title: str = "team", members: Sequence[int] = ()) -> str:
        """A group made over REST by the token's user; its id."""
        status, body, _ = http(
            "POST",
            self.url + "/api/conversations/",
            {"kind": "group", "title": title, "members": list(members)},
            {"Authorization": f"Bearer {token}"},
        )
        assert status == 201, body
        return body["id"]

    def create_superuser(self, username: str, password: str = STAFF_PASSWORD) -> None:
        """`manage.py createsuperuser --noinput` from the environment, as operators do."""
        manage(
            self.stack.env(
                DJANGO_SUPERUSER_USERNAME=username,
                DJANGO_SUPERUSER_PASSWORD=password,
                DJANGO_SUPERUSER_EMAIL=f"{username}@example.com",
            ),
            "createsuperuser",
            "--noinput",
        )

    def staff_token(self, username: str) -> str:
        """A new superuser's API token."""
        self.create_superuser(username)
        status, body, _ = http(
            "POST",
            self.url + "/api/auth/token/",
            {"username": username, "password": STAFF_PASSWORD},
        )
        assert status == 200, body
        return body["token"]

    def ticket(self, token: str) -> str:
        status, body, _ = http(
            "POST",
            self.url + "/api/auth/ws-ticket/",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert status == 201, body
        return body["ticket"]


class Browser:
    """A cookie-keeping HTTP client that logs in through the login form."""

    def __init__(self, node: DaphneNode) -> None:
        import http.cookiejar

        self.node = node
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        return next((c.value for c in self.jar if c.name == name), "")

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> int:
        from urllib.parse import urlencode

        data = urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.node.url + path, data=data, method=method)
        try:
            with self.opener.open(req, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def post_form(self, path: str, form: dict[str, str]) -> int:
        if not self.cookie("csrftoken"):
            self.request("GET", "/accounts/login/")
        return self.request("POST", path, {**form, "csrfmiddlewaretoken": self.cookie("csrftoken")})

    def login(self, username: str, password: str = "a-Long-test-passw0rd") -> None:
        self.request("GET", "/accounts/login/")
        status = self.post_form("/accounts/login/", {"username": username, "password": password})
        assert status == 200 and self.cookie("sessionid"), "login failed"

    def ws_ticket(self) -> str:
        """A ticket obtained with this browser's session (REST call with CSRF)."""
        status, body, _ = http(
            "POST",
            self.node.url + "/api/auth/ws-ticket/",
            None,
            {"Cookie": self.cookie_header, "X-CSRFToken": self.cookie("csrftoken")},
        )
        assert status == 201, body
        return body["ticket"]

    def logout(self) -> int:
        return self.post_form("/accounts/logout/", {})


def publish_many(node: DaphneNode, token: str, topic: str, count: int, size: int) -> None:
    conn = HTTPConnection("127.0.0.1", node.port, timeout=30)
    filler = "x" * size
    for i in range(count):
        body = json.dumps({"data": {"i": i, "t": time.time(), "pad": filler}})
        conn.request(
            "POST",
            f"/api/topics/{topic}/publish/",
            body,
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 201, response.read()
        response.read()


def live_ids(node: DaphneNode) -> set[str]:
    return {row[0] for row in node.stack.sql("SELECT id FROM realtime_liveconnection")}
