"""nginx in front of live test nodes, running the shipped site `deploy/nginx.conf`.

The site is templated, not rewritten: a few named substitutions put the test
nodes in the `upstream`, loopback ports in the `listen` lines and a throwaway
certificate in place of the placeholder paths, and, when a test asks, lower
numbers in the limits. Every directive is the shipped one. Each substitution
must match exactly where it expects to, so a change of the shipped file's shape
fails here loudly instead of testing a configuration nobody ships.

Debian's nginx (`/usr/sbin/nginx`) runs in the foreground with a private prefix
(pid, logs, temp paths, certificate) and is stopped at teardown. Without it the
tests are skipped loudly, or fail when REQUIRE_SERVICES=1 (`require_or_skip`).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support import services
from tests.support.services import ServiceUnavailable, free_port, require_or_skip

__all__ = [
    "SHIPPED_SITE",
    "Limits",
    "NginxExited",
    "NginxFront",
    "TemplateError",
    "make_nginx_front",
    "nginx_front",
    "template_site",
    "ws_location",
]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SITE = ROOT / "deploy" / "nginx.conf"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
PORT_RETRIES = 3


class TemplateError(AssertionError):
    """deploy/nginx.conf no longer has the shape the test template expects."""


class NginxExited(RuntimeError):
    """nginx stopped at start: a configuration it refuses, or a port taken."""


class _Upstream(Protocol):
    """What nginx needs of a node: its loopback port (DaphneNode has it)."""

    port: int


@dataclass(frozen=True)
class Limits:
    """Test values for the shipped limits; None keeps the shipped value.

    Rates are nginx rates (`"1r/m"`, `"50r/s"`). A rate per minute makes a
    flood's outcome exact: within a test nothing leaks out of the bucket, so
    exactly `burst + 1` requests pass.
    """

    handshake_rate: str | None = None
    handshake_burst: int | None = None
    ticket_rate: str | None = None
    ticket_burst: int | None = None
    password_rate: str | None = None
    password_burst: int | None = None
    ws_conn: int | None = None
    # `location /ws/`'s proxy_read_timeout and proxy_send_timeout (`"3s"`).
    ws_read_timeout: str | None = None
    ws_send_timeout: str | None = None


# ------------------------------------------------------------------ template


def _sub_once(text: str, pattern: str, replacement: str, what: str) -> str:
    """Replace the one match of `pattern` (multiline); TemplateError unless exactly one."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise TemplateError(
            f"{SHIPPED_SITE.relative_to(ROOT)} changed shape: expected exactly one {what} "
            f"(pattern {pattern!r}), found {count}. Update tests/support/nginx.py with it."
        )
    return new


def _upstream_servers(text: str, ports: Sequence[int]) -> str:
    """The shipped two `server 127.0.0.1:800N …;` lines become one line per test node,
    with the shipped parameters (max_fails, fail_timeout)."""
    pattern = r"^([ \t]*)server 127\.0\.0\.1:800\d\b([^;\n]*);\n"
    found = list(re.finditer(pattern, text, flags=re.MULTILINE))
    if len(found) != 2:
        raise TemplateError(
            f"{SHIPPED_SITE.relative_to(ROOT)} changed shape: expected the two upstream "
            f"`server 127.0.0.1:800N ...;` lines, found {len(found)}."
        )
    indent, params = found[0].group(1), found[0].group(2)
    lines = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in ports)
    return text[: found[0].start()] + lines + text[found[1].end() :]


def ws_location(text: str) -> tuple[int, int]:
    """Where `location /ws/ { ... }` is in the site: (start, end) of its body."""
    found = list(re.finditer(r"^([ \t]*)location /ws/ \{\n", text, flags=re.MULTILINE))
    if len(found) != 1:
        raise TemplateError(
            f"{SHIPPED_SITE.relative_to(ROOT)} changed shape: expected one "
            f"`location /ws/ {{`, found {len(found)}."
        )
    indent = found[0].group(1)
    end = text.find(f"\n{indent}}}\n", found[0].end())
    if end < 0:
        raise TemplateError("`location /ws/ {` is not closed at its own indentation")
    return found[0].end(), end


def _ws_timeout(text: str, directive: str, value: str | None) -> str:
    """`directive` inside `location /ws/` (once there) set to `value`."""
    if value is None:
        return text
    start, end = ws_location(text)
    body = _sub_once(
        text[start:end], rf"(\b{directive}\s+)\S+;", rf"\g<1>{value};", f"{directive} in /ws/"
    )
    return text[:start] + body + text[end:]


def _rate(text: str, zone: str, rate: str | None) -> str:
    if rate is None:
        return text
    pattern = rf"(\blimit_req_zone\s[^;]*\bzone={zone}:\S+\s+rate=)[^;\s]+;"
    return _sub_once(text, pattern, rf"\g<1>{rate};", f"limit_req_zone for {zone}")


def _burst(text: str, zone: str, burst: int | None) -> str:
    if burst is None:
        return text
    pattern = rf"(\blimit_req\s+zone={zone}\s+burst=)\d+\b"
    return _sub_once(text, pattern, rf"\g<1>{burst}", f"limit_req zone={zone} burst=")


def template_site(
    text: str,
    *,
    upstream_ports: Sequence[int],
    https_port: int,
    http_port: int,
    certificate: Path,
    certificate_key: Path,
    limits: Limits = Limits(),
    media_root: Path | None = None,
) -> str:
    """The shipped site with test nodes, loopback ports and a throwaway certificate
    (and, given `media_root`, the nodes' attachment directory)."""
    if not upstream_ports:
        raise ValueError("nginx needs at least one node")
    text = _upstream_servers(text, upstream_ports)
    # Loopback only; the IPv6 wildcards are dropped (a test host may have no IPv6).
    text = _sub_once(
        text, r"^([ \t]*)listen 443 ssl http2;", rf"\g<1>listen 127.0.0.1:{https_port} ssl http2;",
        "`listen 443 ssl http2;`",
    )  # fmt: skip
    text = _sub_once(text, r"^[ \t]*listen \[::\]:443 ssl http2;\n", "", "IPv6 listen 443")
    text = _sub_once(
        text, r"^([ \t]*)listen 80;", rf"\g<1>listen 127.0.0.1:{http_port};", "`listen 80;`"
    )
    text = _sub_once(text, r"^[ \t]*listen \[::\]:80;\n", "", "IPv6 listen 80")
    text = _sub_once(
        text, r"^([ \t]*ssl_certificate\s+)\S+;", rf"\g<1>{certificate};", "ssl_certificate"
    )
    text = _sub_once(
        text,
        r"^([ \t]*ssl_certificate_key\s+)\S+;",
        rf"\g<1>{certificate_key};",
        "ssl_certificate_key",
    )
    # The attachments' directory: where a test's nodes keep them (their MEDIA_ROOT).
    media = str(media_root).rstrip("/") if media_root is not None else "/var/lib/tether/media"
    text = _sub_once(
        text,
        r"^([ \t]*alias\s+)/var/lib/tether/media/;",
        rf"\g<1>{media}/;",
        "`alias /var/lib/tether/media/;` (the protected media location)",
    )
    # Lower numbers for tests that reach a limit; the directives stay the shipped ones.
    text = _rate(text, "tether_handshake", limits.handshake_rate)
    text = _burst(text, "tether_handshake", limits.handshake_burst)
    text = _rate(text, "tether_ticket", limits.ticket_rate)
    text = _burst(text, "tether_ticket", limits.ticket_burst)
    text = _rate(text, "tether_password", limits.password_rate)
    text = _burst(text, "tether_password", limits.password_burst)
    text = _ws_timeout(text, "proxy_read_timeout", limits.ws_read_timeout)
    text = _ws_timeout(text, "proxy_send_timeout", limits.ws_send_timeout)
    if limits.ws_conn is not None:
        text = _sub_once(
            text,
            r"(\blimit_conn\s+tether_ws_conn\s+)\d+;",
            rf"\g<1>{limits.ws_conn};",
            "limit_conn tether_ws_conn",
        )
    return text


def main_config(prefix: Path, site: Path) -> str:
    """What the site assumes around it, as Debian's /etc/nginx/nginx.conf has it:
    an `events` block and an `http` block that includes the site; every file in
    the private prefix. The access log line carries what tests count."""
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    log_format tether_test '$remote_addr $request_method $uri $status';
    access_log {prefix}/access.log tether_test;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    include {site};
}}
"""


def throwaway_certificate(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert, key, cert PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return cert_path, key_path, cert_pem.decode()


# ------------------------------------------------------------------- process


def find_nginx() -> str | None:
    """nginx from PATH, else Debian's path (/usr/sbin is not on every user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in NGINX_CANDIDATES if os.access(c, os.X_OK)), None)


# nginx processes still running; stopped by atexit if pytest dies before teardown.
_LIVE: list[NginxFront] = []


@atexit.register
def _stop_everything() -> None:
    for front in list(_LIVE):
        with contextlib.suppress(Exception):
            front.stop()


@dataclass
class NginxFront:
    """One nginx running the shipped site in front of test nodes.

    `url` / `ws_url` are the TLS server (https, wss), `http_url` the plain one
    that redirects. Clients verify the throwaway certificate with `ssl`:
    `WsClient.open(front.ws_url + "/ws/chat/", ssl=front.ssl)`,
    `front.http("GET", "/health/")`.
    """

    prefix: Path
    https_port: int
    http_port: int
    ssl: ssl.SSLContext
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def site_path(self) -> Path:
        """The templated site nginx runs (to read in a failing test's report)."""
        return self.prefix / "tether-site.conf"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def access_lines(self) -> list[tuple[str, str, str, int]]:
        """(address, method, path, status) of each request nginx finished.

        A WebSocket's line (101) is written when the socket closes."""
        rows = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.access_log.read_text().splitlines():
                address, method, path, status = line.split(" ")
                rows.append((address, method, path, int(status)))
        return rows

    def error_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no error log)"

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        source: str | None = None,
        tls: bool = True,
        timeout: float = 10,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request through nginx: (status, decoded JSON or text, headers).

        `source` binds the client to another loopback address (127.0.0.2, ...),
        which nginx sees as another client address."""
        source_address = (source, 0) if source else None
        conn: http.client.HTTPConnection
        if tls:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.https_port, timeout=timeout,
                context=self.ssl, source_address=source_address,
            )  # fmt: skip
        else:
            conn = http.client.HTTPConnection(
                "127.0.0.1", self.http_port, timeout=timeout, source_address=source_address
            )
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, data, hdrs)
            response = conn.getresponse()
            raw = response.read()
            status, rheaders = response.status, dict(response.getheaders())
        finally:
            conn.close()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text), rheaders
        except ValueError:
            return status, text, rheaders

    def start(self, binary: str) -> NginxFront:
        """Run nginx in the foreground and wait until a request reaches a node."""
        log = open(self.prefix / "nginx.out", "ab")
        try:
            self.proc = subprocess.Popen(
                # -e: nginx writes to its built-in error log path before it
                # reads error_log from the configuration; keep that private too.
                [binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                 "-e", str(self.error_log)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at pytest must not stop nginx before
                # the teardown does, and the teardown can stop its workers too.
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        _LIVE.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise NginxExited(
                    f"nginx exited with code {code} at start.\n"
                    f"{self.error_tail()}\n{_tail(self.prefix / 'nginx.out')}"
                )
            try:
                status, _, _ = self.http("GET", "/health/", timeout=2)
                if status == 200:
                    return self
                last = AssertionError(f"/health/ through nginx answered {status}")
            except OSError as exc:
                last = exc
            time.sleep(0.05)  # polling a port that is not open yet
        self.stop()
        raise RuntimeError(
            f"nginx did not proxy /health/ within {START_TIMEOUT}s (last: {last}).\n"
            f"{self.error_tail()}"
        )

    def stop(self) -> None:
        """Fast shutdown (SIGTERM: open WebSockets are cut, not waited for as SIGQUIT
        would); SIGKILL to nginx's own process group if it lingers. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self in _LIVE:
            _LIVE.remove(self)

    def close(self) -> None:
        """Stop nginx and remove its prefix (logs, certificate, templated site)."""
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxFront:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _missing_nginx_reason() -> str:
    return (
        "nginx: no nginx binary found (searched PATH="
        f"{os.environ.get('PATH', '')!r} and {', '.join(NGINX_CANDIDATES)}). "
        "Fix: apt-get install nginx (Debian's package; the tests never use its "
        "system configuration or service)."
    )


def _bound_port_lost(front: NginxFront) -> bool:
    text = front.error_tail(50) + _tail(front.prefix / "nginx.out", 50)
    return "Address already in use" in text


def nginx_front(
    nodes: Sequence[_Upstream],
    *,
    limits: Limits = Limits(),
    site: Path = SHIPPED_SITE,
    media_root: Path | None = None,
) -> NginxFront:
    """Start nginx with `site` (the shipped one) in front of `nodes`.

    The caller closes it (`close()`, or `with nginx_front(nodes) as front:`).
    Raises ServiceUnavailable when there is no nginx to run, NginxExited when
    nginx refuses to start (its error log in the message)."""
    binary = find_nginx()
    if binary is None:
        raise ServiceUnavailable(_missing_nginx_reason())
    # Under /tmp, traversable: as root, nginx's workers run as `nobody` and still
    # need the temp paths inside the prefix.
    prefix = Path(tempfile.mkdtemp(prefix="tether-nginx-", dir="/tmp"))
    prefix.chmod(0o755)
    certificate, certificate_key, cert_pem = throwaway_certificate(prefix)
    context = ssl.create_default_context(cadata=cert_pem)
    try:
        for attempt in range(PORT_RETRIES):
            front = NginxFront(prefix, free_port(), free_port(), context)
            front.site_path.write_text(
                template_site(
                    site.read_text(),
                    upstream_ports=[node.port for node in nodes],
                    https_port=front.https_port,
                    http_port=front.http_port,
                    certificate=certificate,
                    certificate_key=certificate_key,
                    limits=limits,
                    media_root=media_root,
                )
            )
            (prefix / "nginx.conf").write_text(main_config(prefix, front.site_path))
            try:
                return front.start(binary)
            except NginxExited:
                # Only a lost port race (free_port() to nginx's bind) is worth
                # another try; a configuration nginx refuses fails the test.
                if attempt == PORT_RETRIES - 1 or not _bound_port_lost(front):
                    raise
                front.error_log.unlink(missing_ok=True)
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(prefix, ignore_errors=True)
        raise


@pytest.fixture
def make_nginx_front(pytestconfig: pytest.Config) -> Iterator[Callable[..., NginxFront]]:
    """Start nginx in front of nodes: `make_nginx_front([node], limits=Limits(...))`.

    Skipped loudly without nginx (failing when REQUIRE_SERVICES=1), before the
    test starts anything else; every nginx started is stopped after the test."""
    # As the services' fixtures do: lets require_or_skip print its banner past capture.
    services._config = pytestconfig
    if find_nginx() is None:
        require_or_skip(_missing_nginx_reason())
    fronts: list[NginxFront] = []

    def start(
        nodes: Sequence[_Upstream], limits: Limits = Limits(), media_root: Path | None = None
    ) -> NginxFront:
        try:
            front = nginx_front(nodes, limits=limits, media_root=media_root)
        except ServiceUnavailable as exc:
            reason = str(exc)
        else:
            fronts.append(front)
            return front
        # Outside the except block, so the report does not repeat the chained error.
        require_or_skip(reason)

    yield start
    for front in fronts:
        front.close()
