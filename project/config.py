"""Every Tether setting, declared once: env var, type, default, meaning.

Django settings, `GET /api/admin/config/` and the README's configuration table
all come from `DECLARATIONS` (docs/architecture.md, rule 6).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from realtime.protocol import valid_topic

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


class ConfigError(Exception):
    """A setting's value is unusable; the message names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {raw!r}") from None


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected on/off (1/0, true/false, yes/no), got {raw!r}")


def parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_database_url(raw: str) -> str:
    import dj_database_url

    url = raw.strip()
    try:
        parsed = dj_database_url.parse(url)
    except Exception as exc:  # dj-database-url raises several types
        raise ValueError(f"malformed database URL ({exc})") from None
    engine = parsed.get("ENGINE", "")
    if "postgresql" not in engine and "sqlite" not in engine:
        raise ValueError("only postgres:// (postgresql://) and sqlite:// URLs are supported")
    if "postgresql" in engine and not parsed.get("NAME"):
        raise ValueError("the URL names no database (postgres://user@host:5432/NAME)")
    return url


def parse_redis_url(raw: str) -> str:
    """One server, or several (white space or commas between URLs), each checked;
    given back with one space between them."""
    from project.redis_conn import split_urls

    urls = split_urls(raw)
    if len(urls) != len(set(urls)):
        raise ValueError("a server is named twice")
    return " ".join(_parse_one_redis_url(url) for url in urls)


def _parse_one_redis_url(url: str) -> str:
    from project.redis_conn import is_sentinel, parse_sentinel_url

    if is_sentinel(url):
        parse_sentinel_url(url)
        return url
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(
            "expected redis://host:port[/db], rediss://, unix:// or "
            "redis+sentinel://host:port[,host:port]/master[/db]"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the port is not a number between 0 and 65535") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the URL names no host")
    return url


def parse_sentinels(raw: str) -> list[str]:
    from project.redis_conn import parse_address

    hosts = parse_list(raw)
    for host in hosts:
        parse_address(host)
    return hosts


def parse_origins(raw: str) -> list[str]:
    origins = parse_list(raw)
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme not in {"http", "https"}
            or not parts.hostname
            or parts.path not in {"", "/"}
        ):
            raise ValueError(f"{origin!r} is not an origin like https://chat.example.com[:port]")
        if "*" in origin:
            raise ValueError("wildcards are not allowed; list every origin exactly")
    # Kept as written (CSRF_TRUSTED_ORIGINS compares literally); the socket
    # check normalizes default ports on both sides.
    return [o.rstrip("/") for o in origins]


def parse_trusted_proxies(raw: str) -> list[str]:
    """Addresses and networks (`127.0.0.1`, `10.0.0.0/8`, `::1`), or `*` for any peer."""
    import ipaddress

    entries = parse_list(raw)
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address or network (10.0.0.0/8), nor `*`"
            ) from None
    return entries


def parse_jwt_secret(raw: str) -> str:
    value = raw.strip()
    if len(value.encode()) < 32:
        raise ValueError("at least 32 bytes: a shorter HS256 key can be guessed offline")
    return value


def parse_public_key(raw: str) -> str:
    """A PEM public key (RSA for RS256, P-256 EC for ES256); `\\n` may stand for newlines
    (an environment file keeps one line)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pem = raw.strip().replace("\\n", "\n")
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY----- …)") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name != "secp256r1":
        raise ValueError(f"an EC key must be on P-256 for ES256, not {key.curve.name}")
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("only RSA (RS256) and P-256 EC (ES256) keys are accepted")
    return pem + "\n"


def parse_rate(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ValueError(f"expected a rate like 10/minute or 100/hour, got {raw!r}")
    return value


def parse_webhook_url(raw: str) -> str:
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the port is not a number between 0 and 65535") from None
    return url


def parse_vapid_key(raw: str) -> str:
    """A P-256 private key, as PEM (`\\n` may stand for newlines) or as the base64url
    of its 32 raw bytes (what web-push tools print); kept as PKCS#8 PEM."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    text = raw.strip().replace("\\n", "\n")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            secret = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            if len(secret) != 32:
                raise ValueError
            key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
    except (ValueError, TypeError):
        raise ValueError(
            "not a P-256 private key (PEM, or base64url of its 32 raw bytes)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("VAPID keys are P-256 EC keys (RFC 8292)")
    return _pem(key)


def _pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def parse_vapid_subject(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if value.startswith("mailto:") and "@" in value[len("mailto:") :]:
        return value
    if parts.scheme == "https" and parts.hostname:
        return value
    raise ValueError("expected a mailto: address or an https:// URL (RFC 8292, section 2.1)")


def parse_url_prefixes(raw: str) -> list[str]:
    prefixes = parse_list(raw)
    for prefix in prefixes:
        parts = urlsplit(prefix)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"{prefix!r} is not a URL prefix like http://127.0.0.1:")
    return prefixes


def parse_log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def parse_log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"text", "json"}:
        raise ValueError("expected text or json")
    return value


def parse_url_path_prefix(raw: str) -> str:
    """An internal location of the proxy in front (`/_protected_media/`)."""
    value = raw.strip()
    if not re.fullmatch(r"/[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*/", value):
        raise ValueError(f"expected a path prefix like /_protected_media/, got {raw!r}")
    return value


def parse_directory(raw: str) -> str:
    """A directory; a relative one is taken from the project's directory."""
    value = raw.strip()
    if "\x00" in value:
        raise ValueError("a path cannot hold NUL")
    return str((BASE_DIR / value).resolve()) if value else value


def parse_dotted_path(raw: str) -> str:
    """`package.module.Class`: a class Django imports (checked when it starts)."""
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", value):
        raise ValueError(
            f"expected a dotted class path like storages.backends.s3.S3Storage, got {raw!r}"
        )
    return value


def parse_json_object(raw: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"expected a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object like {"bucket_name": "tether-media"}')
    return value


def parse_outbox_delivery(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"nodes", "worker"}:
        raise ValueError("expected nodes or worker")
    return value


TOPIC_ACCESS = ("open", "own", "staff", "token")
NAMESPACE_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
DEFAULT_TOPIC_NAMESPACES: dict[str, dict[str, Any]] = {
    "prices": {"history_size": 1000, "history_ttl": 3600, "access": "open"},
    "user": {"history_size": 100, "history_ttl": 86400, "access": "own"},
    "ops": {"history_size": 1000, "history_ttl": 3600, "access": "staff"},
}


def parse_topic_namespaces(raw: str) -> dict[str, dict[str, Any]]:
    """`{"name": {"history_size": N, "history_ttl": seconds, "access": open|own|staff|token}}`."""
    import json

    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"expected a JSON object ({exc})") from None
    if not isinstance(value, dict) or not value:
        raise ValueError('expected a non-empty JSON object like {"prices": {"access": "open"}}')
    out: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        if not NAMESPACE_RE.fullmatch(name):
            raise ValueError(f"namespace {name!r} must match [a-z0-9_-]{{1,32}}")
        if not isinstance(spec, dict):
            raise ValueError(f"namespace {name!r}: expected an object")
        unknown = set(spec) - {"history_size", "history_ttl", "access"}
        if unknown:
            raise ValueError(f"namespace {name!r}: unknown keys {sorted(unknown)}")
        size = spec.get("history_size", 100)
        ttl = spec.get("history_ttl", 3600)
        access = spec.get("access", "open")
        for key, number, low in (("history_size", size, 0), ("history_ttl", ttl, 1)):
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                raise ValueError(f"namespace {name!r}: {key} must be an integer >= {low}")
        if access not in TOPIC_ACCESS:
            raise ValueError(f"namespace {name!r}: access must be one of {', '.join(TOPIC_ACCESS)}")
        out[name] = {"history_size": size, "history_ttl": ttl, "access": access}
    return out


def parse_topic(raw: str) -> str:
    value = raw.strip()
    if value and not valid_topic(value):
        raise ValueError(f"{value!r} is not a topic name like prices:DEMO")
    return value


@dataclass(frozen=True)
class Setting:
    """One declared setting."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    meaning: str
    default_doc: str = ""
    secret: bool = False
    minimum: int | None = None
    maximum: int | None = None
    # Settings whose default depends on others are computed after the rest.
    derived: Callable[[dict[str, Any]], Any] | None = field(default=None, compare=False)

    @property
    def doc_default(self) -> str:
        if self.default_doc:
            return self.default_doc
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, list):
            return ",".join(self.default)
        return str(self.default)


# Django's own generator makes 50 characters; deploy/tether.env.example's placeholder.
MIN_SECRET_KEY_CHARS = 50
EXAMPLE_SECRET_KEY = "CHANGE-ME-to-a-long-random-string"


def _default_secret_key(_: dict[str, Any]) -> str:
    """Generate once, keep in var/secret_key so sessions survive restarts."""
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def _default_vapid_key(_: dict[str, Any]) -> str:
    """Generate once, keep in var/vapid_private_key.pem: browsers' subscriptions are
    bound to the public key, so a new key would orphan every one of them. Written
    under a temporary name and linked into place, so nodes starting together on
    one host all end up with the one key that won."""
    from cryptography.hazmat.primitives.asymmetric import ec

    path = VAR_DIR / "vapid_private_key.pem"
    if path.exists():
        return parse_vapid_key(path.read_text())
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    temporary = VAR_DIR / f".vapid-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_pem(ec.generate_private_key(ec.SECP256R1())))
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process won: its key is the one
    finally:
        temporary.unlink()
    return parse_vapid_key(path.read_text())


def _default_origins(values: dict[str, Any]) -> list[str]:
    port = values["PORT"]
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


def _default_media_root(_: dict[str, Any]) -> str:
    return str(VAR_DIR / "media")


def _default_node_name(_: dict[str, Any]) -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


DECLARATIONS: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        parse_database_url,
        "",
        "database: `postgres://user:pass@host:5432/name` in production",
        default_doc="unset: SQLite file `var/tether.sqlite3`",
        secret=True,
    ),
    Setting(
        "REDIS_URL",
        parse_redis_url,
        "",
        "Redis for the channel layers, topic history and the cache: `redis://host:6379/0`, "
        "or through Redis Sentinel `redis+sentinel://[:password@]host:26379[,host:26379…]"
        "/master[/db]`; several servers separated by spaces, sharded by channel, "
        'conversation and topic (docs/deployment.md, "Several Redis servers")',
        default_doc="unset: in-memory channel layer, one process",
        secret=True,
    ),
    Setting(
        "REDIS_SENTINELS",
        parse_sentinels,
        [],
        "Redis Sentinel addresses `host:port`, comma-separated: the nodes ask them for the "
        "master of `REDIS_SENTINEL_MASTER` and follow its failover (instead of `REDIS_URL`)",
        default_doc="unset: no sentinels",
    ),
    Setting(
        "REDIS_SENTINEL_MASTER",
        parse_str,
        "tether",
        "the name the sentinels monitor the master under (`sentinel monitor NAME …`)",
    ),
    Setting(
        "REDIS_SENTINEL_PASSWORD",
        parse_str,
        "",
        "the sentinels' own password (`requirepass` in sentinel.conf), when they have one",
        default_doc="unset: none",
        secret=True,
    ),
    Setting(
        "DB_POOL_SIZE",
        parse_int,
        10,
        "PostgreSQL connections one node may hold at most (its pool); plan "
        "`nodes x DB_POOL_SIZE` below the server's `max_connections`",
        minimum=2,
    ),
    Setting(
        "DB_POOL_MIN",
        parse_int,
        2,
        "PostgreSQL connections a node keeps open when idle",
        minimum=0,
    ),
    Setting(
        "DB_POOL_TIMEOUT",
        parse_int,
        10,
        "seconds a request waits for a free PostgreSQL connection before it fails "
        "with 503 `unavailable`",
        minimum=1,
    ),
    Setting(
        "DB_POOL_MAX_IDLE",
        parse_int,
        30,
        "seconds between closes of idle PostgreSQL connections beyond `DB_POOL_MIN` (one a period)",
        minimum=1,
    ),
    Setting(
        "DB_TRANSACTION_POOLING",
        parse_bool,
        False,
        "PostgreSQL is reached through a transaction pooler (PgBouncer `pool_mode = "
        "transaction`): server-side prepared statements off (docs/deployment.md)",
    ),
    Setting(
        "SECRET_KEY",
        parse_str,
        "",
        "Django secret (sessions, CSRF, signing); with `DEBUG` off at least 50 characters",
        default_doc="generated once and kept in `var/secret_key`",
        secret=True,
        derived=_default_secret_key,
    ),
    Setting("DEBUG", parse_bool, False, "Django debug pages; never in production"),
    Setting(
        "ALLOWED_HOSTS", parse_list, ["127.0.0.1", "localhost"], "Django hosts, comma-separated"
    ),
    Setting("HOST", parse_str, "127.0.0.1", "address `make run` binds daphne to"),
    Setting("PORT", parse_int, 8000, "port `make run` serves on", minimum=1, maximum=65535),
    Setting(
        "ALLOWED_ORIGINS",
        parse_origins,
        [],
        "browser origins allowed on the sockets and for CSRF, comma-separated, exact "
        "`scheme://host:port`",
        default_doc="`http://127.0.0.1:PORT,http://localhost:PORT`",
        derived=_default_origins,
    ),
    Setting(
        "NODE_NAME",
        parse_str,
        "",
        "this node's name in `welcome`, stats and connection records",
        default_doc="host name + `-` + pid",
        derived=_default_node_name,
    ),
    Setting(
        "HEARTBEAT_INTERVAL",
        parse_int,
        25,
        "seconds; `welcome.heartbeat.interval`; the server pings a socket it sent nothing "
        "to for this long",
        minimum=1,
    ),
    Setting(
        "PING_TIMEOUT",
        parse_int,
        60,
        "seconds of client silence before close 4408; `welcome.heartbeat.timeout`; "
        "must be greater than `HEARTBEAT_INTERVAL`",
        minimum=2,
    ),
    Setting("MAX_CONNECTIONS", parse_int, 10000, "sockets per node (4503 beyond)", minimum=1),
    Setting(
        "MAX_CONNECTIONS_PER_USER",
        parse_int,
        20,
        "sockets per user, cluster-wide (4503 beyond)",
        minimum=1,
    ),
    Setting(
        "TOPIC_NAMESPACES",
        parse_topic_namespaces,
        DEFAULT_TOPIC_NAMESPACES,
        "topic namespaces as JSON: `{name: {history_size, history_ttl (s), access}}`, access "
        "`open` (any user), `own` (`user:<id>` for that user), `staff` (staff with "
        "`realtime.view_operations`), or `token` (a "
        "subscription token the application's backend signed, PROTOCOL 11)",
        default_doc="`prices` open, `user` own (100, 1 day), `ops` staff; `prices`/`ops` keep "
        "1000 for 1 h",
    ),
    Setting(
        "DEMO_FEED",
        parse_topic,
        "",
        "a topic this node publishes a demo price tick to every second (`make run` sets "
        "`prices:DEMO`)",
        default_doc="empty: off",
    ),
    Setting("MAX_SUBSCRIPTIONS_PER_CLIENT", parse_int, 100, "topics per connection", minimum=1),
    Setting(
        "TRUSTED_PROXIES",
        parse_trusted_proxies,
        ["127.0.0.1", "::1"],
        "peers whose `X-Forwarded-For`/`-Proto` a node believes (with daphne's "
        "`--proxy-headers`), comma-separated addresses or networks (`10.0.0.0/8`), `*` for "
        "any; from any other peer the headers are ignored and its own address is the client",
    ),
    Setting(
        "HANDSHAKE_RATE_PER_SECOND",
        parse_int,
        50,
        "socket handshakes per second per client address on a node, before authentication "
        "(403 beyond)",
        minimum=1,
    ),
    Setting(
        "HANDSHAKE_BURST",
        parse_int,
        500,
        "handshakes an address may make at once (an office behind one address reconnecting)",
        minimum=1,
    ),
    Setting(
        "MAX_FRAME_BYTES",
        parse_int,
        65536,
        "largest client frame in UTF-8 bytes, 256 to 1048576 (close 1009 beyond)",
        minimum=256,
        maximum=1048576,
    ),
    Setting(
        "OUTBOUND_MAX_FRAMES",
        parse_int,
        1000,
        "frames a socket may have waiting while its client does not read (close 4509 beyond)",
        minimum=1,
    ),
    Setting(
        "OUTBOUND_MAX_BYTES",
        parse_int,
        1048576,
        "bytes a socket may have waiting while its client does not read (close 4509 beyond)",
        minimum=1024,
    ),
    Setting(
        "MAX_REPLY_BYTES",
        parse_int,
        524288,
        "largest single reply in bytes: a `subscribe` replay beyond it answers "
        "`recovered: false` with no publications (the client reads history by page), a "
        "conversations page is cut short (`has_more`), a `sync` replay stops "
        "(`complete: false`)",
        minimum=65536,
    ),
    Setting(
        "MAX_ATTACHMENT_BYTES",
        parse_int,
        10 * 1024 * 1024,
        "largest attachment upload in bytes (413 `too_large` beyond); keep nginx's "
        "`client_max_body_size` for the upload location a little above it",
        default_doc="`10485760` (10 MiB)",
        minimum=1,
    ),
    Setting(
        "ATTACHMENT_UNCLAIMED_TTL",
        parse_int,
        86400,
        "seconds an attachment no message holds is kept after its upload; node maintenance "
        "removes it (row and file) after that",
        minimum=60,
    ),
    Setting(
        "MEDIA_ROOT",
        parse_directory,
        "",
        "directory of the uploaded files with the file-system storage (relative: to the "
        "project's directory); nginx serves it with `ATTACHMENT_ACCEL_REDIRECT`",
        default_doc="unset: `var/media`",
        derived=_default_media_root,
    ),
    Setting(
        "ATTACHMENT_STORAGE",
        parse_dotted_path,
        "django.core.files.storage.FileSystemStorage",
        "Django storage class of the uploaded files, e.g. `storages.backends.s3.S3Storage` "
        "(django-storages, installed separately; docs/deployment.md)",
    ),
    Setting(
        "ATTACHMENT_STORAGE_OPTIONS",
        parse_json_object,
        {},
        'that storage\'s `OPTIONS` as a JSON object, e.g. `{"bucket_name": "tether-media"}`',
        default_doc="`{}`; the file-system storage gets `MEDIA_ROOT`",
        secret=True,
    ),
    Setting(
        "ATTACHMENT_ACCEL_REDIRECT",
        parse_url_path_prefix,
        "",
        "an internal location of nginx (`/_protected_media/`) aliasing `MEDIA_ROOT`: after "
        "its checks a node answers a download with `X-Accel-Redirect` and nginx sends the "
        "bytes (file-system storage only)",
        default_doc="unset: the node sends the bytes",
    ),
    Setting("MAX_BODY_CHARS", parse_int, 4000, "longest message body", minimum=1),
    Setting(
        "RATE_LIMIT_PER_SECOND",
        parse_int,
        20,
        "per-connection token bucket: frames per second",
        minimum=1,
    ),
    Setting("RATE_LIMIT_BURST", parse_int, 40, "per-connection token bucket: burst", minimum=1),
    Setting("REPLAY_LIMIT", parse_int, 500, "messages per conversation in one `sync`", minimum=1),
    Setting(
        "SYNC_PAGE_CONVERSATIONS",
        parse_int,
        100,
        "conversations one `sync` answer covers (replays, `synced` entries, `joined`); "
        "the client asks for the next page with `synced.next`",
        minimum=1,
    ),
    Setting(
        "AUTH_RATE_LIMIT",
        parse_rate,
        "10/minute",
        "failed password tries (token, login form, Django admin) per client address and "
        "per user name, and sign-ups per address and name, e.g. `10/minute`, `100/hour` "
        "(429 beyond)",
    ),
    Setting(
        "QUOTA_MESSAGES",
        parse_rate,
        "120/minute",
        "messages a user may post over REST, across nodes (sockets have their token "
        "bucket; the backend API is not counted); 429 `rate_limited` beyond",
    ),
    Setting(
        "QUOTA_CONVERSATIONS",
        parse_rate,
        "60/hour",
        "conversations a user may create (`POST /api/conversations/`), across nodes",
    ),
    Setting(
        "QUOTA_MEMBER_ADDS",
        parse_rate,
        "300/hour",
        "members a user may add to groups, across nodes",
    ),
    Setting(
        "QUOTA_USER_LOOKUPS",
        parse_rate,
        "60/minute",
        "user look-ups (`GET /api/users/`) per user, across nodes",
    ),
    Setting(
        "QUOTA_TOPIC_HISTORY",
        parse_rate,
        "600/minute",
        "topic history reads per user (REST history, `subscribe` with `since`), across nodes",
    ),
    Setting(
        "QUOTA_SUBSCRIPTIONS",
        parse_rate,
        "1200/minute",
        "`subscribe` and `unsubscribe` frames per user, across nodes (`rate_limited` "
        "beyond; the socket stays open)",
    ),
    Setting(
        "QUOTA_PUSH_SUBSCRIPTIONS",
        parse_rate,
        "60/hour",
        "Web Push subscriptions registered or removed per user (each registration resolves "
        "the endpoint's host), across nodes",
    ),
    Setting(
        "QUOTA_UPLOADS",
        parse_rate,
        "100/hour",
        "attachments a user may upload (`POST /api/conversations/<id>/attachments/`), across nodes",
    ),
    Setting("SIGNUP_ENABLED", parse_bool, True, "`POST /api/auth/register/` open to anyone"),
    Setting(
        "API_TOKEN_TTL",
        parse_int,
        30,
        "days a token from `POST /api/auth/token/` lasts (not renewed by use; 0: no expiry); "
        "`manage.py issue_token --expires-in` sets its own",
        minimum=0,
    ),
    Setting(
        "AUTO_MIGRATE",
        parse_bool,
        True,
        "apply pending database migrations when a node starts (one node at a time, under a "
        "PostgreSQL transaction-scoped advisory lock, which a transaction pooler keeps)",
    ),
    Setting(
        "METRICS_TOKEN",
        parse_str,
        "",
        "when set, `GET /metrics` needs `Authorization: Bearer <METRICS_TOKEN>`",
        default_doc="empty: /metrics open to all (restrict it at the proxy)",
        secret=True,
    ),
    Setting(
        "JWT_SECRET",
        parse_jwt_secret,
        "",
        "shared key for connection tokens signed by the application's backend with HS256 "
        "(PROTOCOL 11); at least 32 bytes",
        default_doc="empty: HS256 tokens refused",
        secret=True,
    ),
    Setting(
        "JWT_PUBLIC_KEY",
        parse_public_key,
        "",
        "PEM public key for connection tokens signed with RS256 (RSA) or ES256 (P-256); "
        "`\\n` may stand for newlines",
        default_doc="empty: RS256 and ES256 tokens refused",
    ),
    Setting(
        "JWT_AUDIENCE",
        parse_str,
        "",
        "when set, a connection token's `aud` must name it",
    ),
    Setting(
        "JWT_ISSUER",
        parse_str,
        "",
        "when set, a connection token's `iss` must equal it",
    ),
    Setting(
        "WEBHOOK_URL",
        parse_webhook_url,
        "",
        "where every event is POSTed (PROTOCOL 13): `https://backend.example.com/tether`; "
        "needs `WEBHOOK_SECRET`",
        default_doc="empty: no webhooks, no outbox rows written",
        # A receiver's URL may carry a credential (user information, a token parameter).
        secret=True,
    ),
    Setting(
        "WEBHOOK_SECRET",
        parse_str,
        "",
        "key of the `Tether-Signature` HMAC-SHA256 of each webhook; required with `WEBHOOK_URL`",
        default_doc="empty",
        secret=True,
    ),
    Setting(
        "WEBHOOK_MAX_AGE",
        parse_int,
        86400,
        "seconds an event is retried (growing delays) before it is kept as failed",
        minimum=60,
    ),
    Setting(
        "WEBHOOK_TIMEOUT",
        parse_int,
        10,
        "seconds a webhook request may take in all before it counts as failed and is retried",
        minimum=1,
        maximum=300,
    ),
    Setting(
        "OUTBOX_DELIVERY",
        parse_outbox_delivery,
        "nodes",
        "who sends the outbox's webhooks and pushes: `nodes` (every daphne node, beside "
        "its sockets) or `worker` (only `manage.py deliver_outbox` processes: the nodes "
        'just write the rows; docs/webhooks.md, "A delivery worker")',
    ),
    Setting(
        "WEBHOOK_CONCURRENCY",
        parse_int,
        8,
        "webhook and push requests one node (or worker) has in flight at most (and "
        "connections it keeps open)",
        minimum=1,
        maximum=256,
    ),
    Setting(
        "VAPID_PRIVATE_KEY",
        parse_vapid_key,
        "",
        "Web Push's VAPID key (PROTOCOL 14): a P-256 private key, PEM or base64url of its "
        "32 raw bytes; every node of a cluster needs the same one",
        default_doc="generated once and kept in `var/vapid_private_key.pem`",
        secret=True,
        derived=_default_vapid_key,
    ),
    Setting(
        "VAPID_SUBJECT",
        parse_vapid_subject,
        "mailto:tether@localhost",
        "who push services may contact about this server's pushes: `mailto:` or `https:`",
    ),
    Setting(
        "PUSH_ENDPOINT_ALLOWLIST",
        parse_url_prefixes,
        [],
        "push endpoint prefixes allowed although `http:` or on a private address, "
        "comma-separated (tests: `http://127.0.0.1:`)",
        default_doc="empty",
    ),
    Setting("LOG_LEVEL", parse_log_level, "INFO", "logging level"),
    Setting(
        "LOG_FORMAT", parse_log_format, "text", "`text`, or `json` for one JSON object per line"
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in DECLARATIONS}


@dataclass(frozen=True)
class Config:
    """The effective configuration: values and where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


def _check_range(setting: Setting, value: Any) -> None:
    if setting.minimum is not None and value < setting.minimum:
        raise ConfigError(setting.name, f"must be at least {setting.minimum}, got {value}")
    if setting.maximum is not None and value > setting.maximum:
        raise ConfigError(setting.name, f"must be at most {setting.maximum}, got {value}")


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Read every declared setting from the environment; raise ConfigError."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    pending: list[Setting] = []
    for setting in DECLARATIONS:
        raw = env.get(setting.name)
        if raw is None or raw.strip() == "":
            if setting.derived is not None:
                pending.append(setting)
                continue
            values[setting.name] = setting.default
            sources[setting.name] = "default"
            continue
        try:
            value = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(setting.name, str(exc)) from None
        _check_range(setting, value)
        values[setting.name] = value
        sources[setting.name] = "environment"
    for setting in pending:
        values[setting.name] = setting.derived(values)  # type: ignore[misc]
        sources[setting.name] = "default"
    if not values["DEBUG"] and sources["SECRET_KEY"] == "environment":
        key = values["SECRET_KEY"]
        if len(key) < MIN_SECRET_KEY_CHARS or key == EXAMPLE_SECRET_KEY:
            raise ConfigError(
                "SECRET_KEY",
                f"must be at least {MIN_SECRET_KEY_CHARS} random characters, not the example's "
                "placeholder (it signs sessions and CSRF tokens: a guessable key forges them)",
            )
    if values["PING_TIMEOUT"] <= values["HEARTBEAT_INTERVAL"]:
        raise ConfigError(
            "PING_TIMEOUT",
            f"must be greater than HEARTBEAT_INTERVAL ({values['PING_TIMEOUT']} <= "
            f"{values['HEARTBEAT_INTERVAL']})",
        )
    if values["WEBHOOK_URL"] and not values["WEBHOOK_SECRET"]:
        raise ConfigError(
            "WEBHOOK_SECRET",
            "required when WEBHOOK_URL is set (receivers verify every request with it)",
        )
    if values["REDIS_SENTINELS"] and values["REDIS_URL"]:
        raise ConfigError(
            "REDIS_SENTINELS",
            "set either REDIS_SENTINELS or REDIS_URL, not both (a master with a password: "
            "REDIS_URL=redis+sentinel://:PASSWORD@host:26379,host:26379/master)",
        )
    return Config(values=values, sources=sources)


def effective_redis_url(values: Mapping[str, Any]) -> str:
    """The one Redis address every client uses: `REDIS_URL`, or the
    `redis+sentinel://` URL that `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` spell;
    `REDIS_SENTINEL_PASSWORD` joins either sentinel form. Empty: no Redis."""
    from project.redis_conn import is_sentinel, sentinel_url, split_urls, with_sentinel_password

    password = values["REDIS_SENTINEL_PASSWORD"]
    if values["REDIS_SENTINELS"]:
        return sentinel_url(values["REDIS_SENTINELS"], values["REDIS_SENTINEL_MASTER"], password)
    urls = split_urls(values["REDIS_URL"])
    return " ".join(
        with_sentinel_password(url, password) if password and is_sentinel(url) else url
        for url in urls
    )


def redacted(config: Config) -> list[dict[str, Any]]:
    """Each setting with value and source; secrets shown as `***` when set."""
    rows = []
    for setting in DECLARATIONS:
        value = config.values[setting.name]
        if setting.secret and value:
            # Per server: `REDIS_URL` may name several, one space apart.
            value = (
                " ".join(_redact_url(u) for u in str(value).split(" "))
                if "://" in str(value)
                else "***"
            )
        rows.append(
            {
                "name": setting.name,
                "value": value,
                "source": config.sources[setting.name],
                "default": setting.doc_default,
                "meaning": setting.meaning,
            }
        )
    return rows


# Query parameters of a URL that carry a credential (`redis://h/0?password=…`).
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[a-z_]*pass(?:word)?|pwd|secret|token|[a-z_]*key)=)[^&;#]*"
)


def _redact_url(url: str) -> str:
    """Keep scheme, host and path so operators can see where it points; the user
    information and every credential in the query become `***`."""
    return _SECRET_PARAM.sub(r"\1***", re.sub(r"//[^/?#]*@", "//***@", url))


def markdown_table() -> str:
    """The README's configuration table, generated from the declarations."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for setting in DECLARATIONS:
        default = setting.doc_default
        if not default.startswith(("`", "unset", "generated", "host")):
            default = f"`{default}`"
        lines.append(f"| `{setting.name}` | {default} | {setting.meaning} |")
    return "\n".join(lines)
