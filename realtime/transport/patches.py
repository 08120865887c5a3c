"""Every piece of a server's internals that Tether replaces or relies on, declared once
and checked at start.

daphne, Twisted, autobahn, uvicorn, httptools and channels-redis offer no public
way to do some things Tether needs (close codes, backpressure, one round trip
for many publications, memory per socket). Where Tether reaches inside them,
the place is declared here as a `Patch`: the package, the thing (a function
it replaces, or attributes it reads), the shape the code was written for, and
the upstream bug or limit it works around. `problems()` holds each declaration
against the installed packages; an upgrade that moved or reshaped one of them
stops the node at start (`project/asgi.py`) with one line naming the package,
its version and the patch, and `manage.py check` reports it as `tether.E001`.
The replacements themselves live beside this module (`daphne_compat.py`,
`uvicorn_compat.py`, `backpressure.py`) and channels-redis' beside the hub
(`realtime/node/layer_compat.py`); each applies itself through `replace()`, which
checks first. docs/architecture.md, "Server internals".
"""

from __future__ import annotations

import dis
import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Patch:
    """One place inside another package: `module`:`path` (dotted within the module).

    `params`: the parameter names of the function as written upstream (None when
    it is not a function Tether replaces). `attrs`: attributes the object must
    have. `assigned`: for a class, instance attributes its methods must set
    (`self.NAME = …` somewhere in its code or its bases', such as Twisted's
    `_tempDataLen`), which no class attribute shows.
    """

    name: str
    package: str
    module: str
    path: str
    why: str
    params: tuple[str, ...] | None = None
    attrs: tuple[str, ...] = ()
    assigned: tuple[str, ...] = ()
    optional: bool = False  # the package may be absent (uvicorn): then nothing to check


# The originals that `replace()` swapped out, so a later check still sees upstream's.
_originals: dict[tuple[str, str], Any] = {}


def _resolve(patch: Patch) -> Any:
    obj: Any = importlib.import_module(patch.module)
    for part in patch.path.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            raise LookupError(f"{patch.module}.{patch.path} is missing")
    return obj


def original(patch: Patch) -> Any:
    """Upstream's object, even after `replace()` put Tether's in its place."""
    key = (patch.module, patch.path)
    return _originals[key] if key in _originals else _resolve(patch)


def _assigned(cls: type) -> set[str]:
    """Attribute names stored (`x.NAME = …`) by the code of `cls` and its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        for value in vars(klass).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None:
                names.update(
                    i.argval for i in dis.get_instructions(code) if i.opname == "STORE_ATTR"
                )
    return names


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def problem(patch: Patch) -> str | None:
    """Why `patch` no longer fits the installed package, as one line; None if it fits."""
    try:
        target = original(patch)
    except ImportError:
        if patch.optional:
            return None
        found = f"{patch.module} cannot be imported"
    except LookupError as exc:
        found = str(exc)
    else:
        found = _shape_problem(patch, target)
        if found is None:
            return None
    return (
        f"{patch.package} {version(patch.package)}: Tether's patch '{patch.name}' does not "
        f"fit: {found} (written for: {patch.why})"
    )


def _shape_problem(patch: Patch, target: Any) -> str | None:
    if patch.params is not None:
        try:
            params = tuple(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            return f"{patch.module}.{patch.path} is no longer a function"
        if params != patch.params:
            return (
                f"{patch.module}.{patch.path} takes ({', '.join(params)}), "
                f"not ({', '.join(patch.params)})"
            )
    missing = [name for name in patch.attrs if not hasattr(target, name)]
    if patch.assigned:
        stored = _assigned(target) if inspect.isclass(target) else set()
        missing += [name for name in patch.assigned if name not in stored]
    if missing:
        return f"{patch.module}.{patch.path} has no {', '.join(missing)}"
    return None


def problems(patches: tuple[Patch, ...] | None = None) -> list[str]:
    """One line per declared patch that does not fit the installed packages."""
    found = (problem(patch) for patch in (ALL if patches is None else patches))
    return [line for line in found if line is not None]


class PatchDoesNotFit(RuntimeError):
    """An upgrade changed what a patch replaces; the message is `problem()`'s line."""


def replace(patch: Patch, replacement: Any) -> None:
    """Put `replacement` where `patch` points, after checking upstream's shape."""
    line = problem(patch)
    if line is not None:
        raise PatchDoesNotFit(line)
    key = (patch.module, patch.path)
    if key in _originals:
        return  # applied already
    owner_path, _, attr = patch.path.rpartition(".")
    owner: Any = importlib.import_module(patch.module)
    for part in filter(None, owner_path.split(".")):
        owner = getattr(owner, part)
    _originals[key] = getattr(owner, attr)
    setattr(owner, attr, replacement)


DAPHNE_CLOSE = Patch(
    "close with any valid code",
    "daphne",
    "daphne.ws_protocol",
    "WebSocketProtocol.serverClose",
    "autobahn's sendClose refuses 1001-2999 (crossbario/autobahn-python#1642, "
    "django/daphne#374); PROTOCOL 4 needs 1001, 1009, 1011, 1012",
    params=("self", "code"),
)
DAPHNE_CLOSE_FRAME = Patch(
    "close with any valid code (the frame)",
    "autobahn",
    "daphne.ws_protocol",
    "WebSocketProtocol",
    "the replacement sends through autobahn's lower-level sendCloseFrame",
    attrs=("sendClose", "sendCloseFrame"),
)
DAPHNE_KILL_ALL = Patch(
    "cancel every consumer at shutdown",
    "daphne",
    "daphne.server",
    "Server.kill_all_applications",
    "daphne's version raises KeyError on a connection whose application already "
    "finished, so open sockets' consumers are never cancelled",
    params=("self",),
    attrs=(),
)
DAPHNE_SERVER = Patch(
    "cancel every consumer at shutdown (its books)",
    "daphne",
    "daphne.server",
    "Server",
    "the replacement walks daphne's connection table",
    assigned=("connections",),
)
DAPHNE_ACCESS_LOG = Patch(
    "access log through logging",
    "daphne",
    "daphne.access",
    "AccessLogGenerator.write_entry",
    "daphne writes its access log, query strings and tickets included, to stdout "
    "past Python logging and its redaction",
    params=("self", "host", "date", "request", "status", "length", "ident", "user"),
)
DAPHNE_UPGRADE = Patch(
    "unlink the HTTP request after an upgrade",
    "daphne",
    "daphne.http_protocol",
    "WebRequest.process",
    "daphne leaves the HTTP channel and request pointing at each other after an "
    "upgrade: twenty objects per handshake that only a full collection frees",
    params=("self",),
)
_FORWARDED_PARAMS = (
    "headers",
    "address_header_name",
    "port_header_name",
    "proto_header_name",
    "original_addr",
    "original_scheme",
)
DAPHNE_FORWARDED_HTTP = Patch(
    "X-Forwarded-* only from trusted proxies (HTTP)",
    "daphne",
    "daphne.http_protocol",
    "parse_x_forwarded_for",
    "daphne's --proxy-headers believes X-Forwarded-For from any peer, so a client "
    "reaching a node directly picks its own address (and dodges per-address limits); "
    "daphne has no trusted-proxy list (uvicorn's --forwarded-allow-ips)",
    params=_FORWARDED_PARAMS,
)
DAPHNE_FORWARDED_WS = Patch(
    "X-Forwarded-* only from trusted proxies (WebSocket)",
    "daphne",
    "daphne.ws_protocol",
    "parse_x_forwarded_for",
    "as above: daphne's WebSocket protocol reads the headers again, by its own import",
    params=_FORWARDED_PARAMS,
)
DAPHNE_FORM_BODIES = Patch(
    "leave request bodies to the application",
    "daphne",
    "daphne.http_protocol",
    "WebRequest.__init__",
    "Twisted's Request parses every POSTed multipart/form-data body into memory "
    "(`request.args`, which daphne never reads: a second copy of each attachment "
    "upload) and answers a body its MIME parser refuses with a bare 400 before the "
    "application sees it; daphne leaves Twisted's `parsePOSTFormSubmission` on",
    params=("self", "args", "kwargs"),
)
TWISTED_FORM_PARSING = Patch(
    "leave request bodies to the application (Twisted's switch)",
    "Twisted",
    "twisted.web.http",
    "Request",
    "the replacement turns off `_parsePOSTFormSubmission` (Twisted >= 24.7)",
    assigned=("_parsePOSTFormSubmission",),
)
AUTOBAHN_DEBUG_TEXT = Patch(
    "autobahn's debug text built lazily",
    "autobahn",
    "autobahn.util",
    "hltype",
    "autobahn pretty-prints its configuration for debug lines on every connection, "
    "logged or not (a sixth of the loop while sockets open)",
)
AUTOBAHN_DEBUG_VALUES = Patch(
    "autobahn's debug text built lazily (values)",
    "autobahn",
    "autobahn.util",
    "hlval",
    "as above",
)
AUTOBAHN_PFORMAT = Patch(
    "autobahn's debug text built lazily (pformat)",
    "autobahn",
    "autobahn.websocket.protocol",
    "pformat",
    "as above",
)
AUTOBAHN_TIMINGS = Patch(
    "autobahn's debug text built lazily (timings)",
    "autobahn",
    "autobahn.websocket.protocol",
    "Timings",
    "Timings.__str__ is the one caller that needs the text itself",
    assigned=("_timings",),
)
UVICORN_UPGRADE = Patch(
    "unlink httptools' parser after an upgrade",
    "uvicorn",
    "uvicorn.protocols.http.httptools_impl",
    "HttpToolsProtocol.handle_websocket_upgrade",
    "uvicorn's HTTP protocol and its httptools parser keep pointing at each other "
    "after an upgrade: a dozen objects per handshake that only a full collection frees",
    params=("self",),
    optional=True,
)
UVICORN_PARSER = Patch(
    "unlink httptools' parser after an upgrade (the parser)",
    "uvicorn",
    "uvicorn.protocols.http.httptools_impl",
    "HttpToolsProtocol",
    "the replacement drops the protocol's parser",
    assigned=("parser",),
    optional=True,
)
TWISTED_WRITE_NOW = Patch(
    "backpressure: producer and direct writes",
    "Twisted",
    "twisted.internet.tcp",
    "Connection",
    "daphne's send never blocks and says nothing of a full buffer; Twisted's push "
    "producer does, and a write with nothing buffered can go out at once "
    "(docs/architecture.md, 'Backpressure')",
    attrs=(
        "dataBuffer",
        "offset",
        "disconnecting",
        "producer",
        "unregisterProducer",
        "abortConnection",
        "write",
    ),
    assigned=("_tempDataLen", "socket"),
)
DAPHNE_RAW_SEND = Patch(
    "backpressure: the socket behind daphne's send",
    "daphne",
    "daphne.server",
    "Server.handle_reply",
    "daphne's ASGI send is functools.partial(server.handle_reply, protocol): the "
    "only way to the socket's protocol and transport",
    params=("self", "protocol", "message"),
)
DAPHNE_WS_PROTOCOL = Patch(
    "backpressure: daphne's WebSocket protocol",
    "daphne",
    "daphne.ws_protocol",
    "WebSocketProtocol",
    "a producer registers on the protocol; frames are written while it is open",
    attrs=("registerProducer", "STATE_OPEN", "transport"),
    assigned=("state", "_perMessageCompress"),
)
UVICORN_WRITABLE = Patch(
    "backpressure: uvicorn's writable event",
    "uvicorn",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "WebSocketsSansIOProtocol",
    "uvicorn's send waits for nothing either; its sans-I/O protocol's writable "
    "event says when the transport is full",
    assigned=("writable", "conn", "transport"),
    optional=True,
)
REDIS_PUBSUB_LAYER = Patch(
    "one pipeline for many publications (the layer)",
    "channels-redis",
    "channels_redis.pubsub",
    "RedisPubSubChannelLayer",
    "channels-redis publishes each group_send under a lock and waits for Redis "
    "before the next: a batch to 30 conversations cost 30 round trips in a row",
    attrs=("_get_layer", "serialize"),
)
REDIS_PUBSUB_LOOP_LAYER = Patch(
    "one pipeline for many publications (channel names, shards)",
    "channels-redis",
    "channels_redis.pubsub",
    "RedisPubSubLoopLayer",
    "the pipeline uses the layer's own channel names and shards",
    attrs=("_get_group_channel_name", "_get_shard"),
)
REDIS_SHARD = Patch(
    "one pipeline for many publications (the connection)",
    "channels-redis",
    "channels_redis.pubsub",
    "RedisSingleShardConnection",
    "the pipeline takes the shard's lock and its Redis client as publish does",
    attrs=("_ensure_redis",),
    assigned=("_lock", "_redis"),
)

REDIS_HASH = Patch(
    "several Redis servers: the layers' ring",
    "channels-redis",
    "channels_redis.utils",
    "_consistent_hash",
    "the topic store and the cache put each key on the server channels-redis would "
    "pick for that name, so one ring spreads every kind of traffic",
    params=("value", "ring_size"),
)
ALL: tuple[Patch, ...] = (
    DAPHNE_CLOSE,
    DAPHNE_CLOSE_FRAME,
    DAPHNE_KILL_ALL,
    DAPHNE_SERVER,
    DAPHNE_ACCESS_LOG,
    DAPHNE_UPGRADE,
    DAPHNE_FORWARDED_HTTP,
    DAPHNE_FORWARDED_WS,
    DAPHNE_FORM_BODIES,
    TWISTED_FORM_PARSING,
    AUTOBAHN_DEBUG_TEXT,
    AUTOBAHN_DEBUG_VALUES,
    AUTOBAHN_PFORMAT,
    AUTOBAHN_TIMINGS,
    UVICORN_UPGRADE,
    UVICORN_PARSER,
    TWISTED_WRITE_NOW,
    DAPHNE_RAW_SEND,
    DAPHNE_WS_PROTOCOL,
    UVICORN_WRITABLE,
    REDIS_PUBSUB_LAYER,
    REDIS_PUBSUB_LOOP_LAYER,
    REDIS_SHARD,
    REDIS_HASH,
)
