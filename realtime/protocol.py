"""Wire protocol v1: frame parsing, validation, error and close codes. Pure, no I/O.

The contract is ../shared/PROTOCOL.md; docs/protocol.md describes it for users.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1


class Close:
    """WebSocket close codes (PROTOCOL 4)."""

    NORMAL = 1000  # normal closure
    GOING_AWAY = 1001  # server going away
    TOO_BIG = 1009  # frame over MAX_FRAME_BYTES
    INTERNAL = 1011  # internal error
    RESTART = 1012  # node draining
    PROTOCOL_VIOLATION = 4400  # binary frames or bad JSON, repeated
    UNAUTHENTICATED = 4401  # missing/invalid credentials, logged out, ticket expired
    FORBIDDEN = 4403  # disabled, banned, kicked by an operator
    HEARTBEAT_TIMEOUT = 4408  # nothing heard within heartbeat.timeout
    FLOODING = 4429  # over the rate limit for 10 s in a row
    OVER_CAPACITY = 4503  # node or per-user connection limit
    SLOW_CONSUMER = 4509  # outbound buffer overflowed


CLOSE_REASONS: dict[int, str] = {
    Close.NORMAL: "normal",
    Close.GOING_AWAY: "going_away",
    Close.TOO_BIG: "too_big",
    Close.INTERNAL: "internal",
    Close.RESTART: "restart",
    Close.PROTOCOL_VIOLATION: "protocol_violation",
    Close.UNAUTHENTICATED: "unauthenticated",
    Close.FORBIDDEN: "forbidden",
    Close.HEARTBEAT_TIMEOUT: "heartbeat_timeout",
    Close.FLOODING: "flooding",
    Close.OVER_CAPACITY: "over_capacity",
    Close.SLOW_CONSUMER: "slow_consumer",
}
# What a client's close may carry besides ours: no status, abnormal (no close frame).
_CLIENT_CLOSE_CODES = frozenset({1005, 1006})


def close_label(code: object) -> str:
    """A close code as a metric label: the protocol's codes, else `other`. A client
    chooses its own close code; kept as is, any number would be a new time series."""
    if isinstance(code, int) and (code in CLOSE_REASONS or code in _CLIENT_CLOSE_CODES):
        return str(code)
    return "other"


class Code:
    """Error codes of `error` frames (PROTOCOL 3) and REST `error` fields."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    LIMIT_EXCEEDED = "limit_exceeded"
    INTERNAL = "internal"


class TetherError(Exception):
    """A failure in the protocol's terms: one code, a message, extra fields."""

    def __init__(
        self, code: str, message: str, *, request_id: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra
        # Set when the failing frame's own id is known before it fully parsed.
        self.request_id = request_id

    def frame(self, request_id: str | None = None) -> dict[str, Any]:
        """The `error` frame for this failure."""
        out: dict[str, Any] = {"type": "error"}
        request_id = request_id if request_id is not None else self.request_id
        if request_id is not None:
            out["id"] = request_id
        out["code"] = self.code
        out["message"] = self.message
        out.update(self.extra)
        return out


def bad_request(field_name: str, problem: str) -> TetherError:
    """`bad_request` whose message starts with the field it is about."""
    return TetherError(Code.BAD_REQUEST, f"{field_name}: {problem}", field=field_name)


@dataclass
class Frame:
    """A parsed client frame: its type, optional request id and raw fields."""

    type: str
    id: str | None
    data: dict[str, Any] = field(repr=False)

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

    def number(self, name: str, *, required: bool = True) -> int | float | None:
        """An integer or float field."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise bad_request(name, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(name, "must be a number")
        return value


MAX_ID_CHARS = 64
# The largest integer a database column holds (BIGINT). A larger id names nothing,
# and asking the database about it fails (SQLite: OverflowError) instead of
# finding nothing, so such ids are answered without a query.
MAX_STORABLE_INT = 2**63 - 1
# `namespace:name` (PROTOCOL 7); static/tether/feeds.js keeps a copy (tests check both agree).
TOPIC_RE = re.compile(r"[a-z0-9_-]{1,32}:[A-Za-z0-9_.@-]{1,128}")


def valid_topic(value: Any) -> bool:
    """A topic name (PROTOCOL 7): the one rule for sockets, REST, settings and the CLI."""
    return isinstance(value, str) and TOPIC_RE.fullmatch(value) is not None


def _finite(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); echoing them would break clients.
    raise ValueError(f"{name} is not a JSON value")


class _OutOfRange:
    """Stands for a number too large to decode while looking for its field."""


_OUT_OF_RANGE = _OutOfRange()


def _out_of_range(text: str) -> tuple[str, Any] | None:
    """The dotted path of the first number too large to decode (more digits than
    Python converts, or beyond a double) and the rest of the decoded text, or None
    when that is not what failed. Only on the error path: the text is decoded again
    with lenient numbers."""

    def number(literal: str) -> Any:
        try:
            value = float(literal) if any(c in literal for c in ".eE") else int(literal)
        except ValueError:
            return _OUT_OF_RANGE
        return _OUT_OF_RANGE if isinstance(value, float) and math.isinf(value) else value

    try:
        data = json.loads(text, parse_int=number, parse_float=number, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if value is _OUT_OF_RANGE:
            return path or "value", data
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return None


def valid_id(value: Any) -> bool:
    """An id of 1 to 64 characters (request ids, client ids, conversation ids)."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS


def non_negative(value: Any, name: str) -> int:
    """An integer >= 0 from a frame or a JSON body (seq, offset, positions), or
    `bad_request` naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(name, "must be an integer >= 0")
    return value


def storable_int(value: int) -> bool:
    """Whether a database column can hold `value` (an id beyond it names nothing)."""
    return -MAX_STORABLE_INT <= value <= MAX_STORABLE_INT


def loads(text: str, what: str = "the frame") -> Any:
    """JSON as the sockets and the REST API accept it: `bad_json` for what is not JSON
    (NaN and Infinity included) or nests too deeply, `bad_request` naming the field
    for a number too large to hold (valid JSON, RFC 8259 lets a reader bound it),
    with the frame's `id` when it has a valid one."""
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constants)
    except RecursionError:
        raise TetherError(Code.BAD_JSON, f"{what} nests too deeply") from None
    except ValueError as error:
        found = _out_of_range(text)
        if found is not None:
            field_name, data = found
            refused = bad_request(field_name, "number out of range")
            request_id = data.get("id") if isinstance(data, dict) else None
            refused.request_id = request_id if valid_id(request_id) else None
            raise refused from None
        # The decoder's own words say where (`Expecting value: line 1 column 5`).
        raise TetherError(Code.BAD_JSON, f"{what} is not valid JSON: {error}") from None


def parse_frame(text: str) -> Frame:
    """Decode one text frame; raise TetherError(bad_json | bad_request)."""
    data = loads(text)
    if not isinstance(data, dict):
        raise TetherError(Code.BAD_JSON, "the frame must be a JSON object")
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(data):
        # JSON allows "\ud800" alone, but it is not text: no database can store it.
        raise TetherError(Code.BAD_JSON, "the frame contains an unpaired UTF-16 surrogate escape")
    request_id = data.get("id")
    if request_id is not None and not valid_id(request_id):
        raise bad_request("id", f"must be a string of 1 to {MAX_ID_CHARS} characters")
    frame_type = data.get("type")
    if frame_type is None or not isinstance(frame_type, str):
        problem = "is required" if frame_type is None else "must be a string"
        error = bad_request("type", problem)
        error.request_id = request_id
        raise error
    return Frame(type=frame_type, id=request_id, data=data)


def _has_lone_surrogate(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def encode(frame: dict[str, Any]) -> str:
    """Compact JSON; non-ASCII kept as is (smaller, and bodies stay as written)."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def now_ms() -> int:
    """Milliseconds since the Unix epoch, as `ts` and `server_time` use."""
    return time.time_ns() // 1_000_000


def utf8_length_exceeds(text: str, limit: int) -> bool:
    """Whether `text` encodes to more than `limit` bytes, without encoding short text."""
    if len(text) * 4 <= limit:  # at most 4 bytes per code point
        return False
    if len(text) > limit:
        return True
    return len(text.encode("utf-8", "surrogatepass")) > limit


def user_repr(user: Any) -> dict[str, Any]:
    """The user as every frame and response shows one (PROTOCOL 9, 11): built here only."""
    shown = {"id": user.pk, "username": user.get_username()}
    external_id = getattr(user, "external_id", None)
    if external_id is not None:
        shown["external_id"] = external_id  # a user from the application's backend
    return shown
