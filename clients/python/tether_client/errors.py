"""Typed errors in the protocol's terms: one class per error code (PROTOCOL 3 and 9).

REST answers and socket `error` frames carry the same codes, so both raise the same
classes; `status` is the HTTP status for REST and None for a socket reply.
"""

from __future__ import annotations

from typing import Any


class TetherError(Exception):
    """A refusal from Tether: `code` is the protocol's error code string."""

    code: str = "error"

    def __init__(
        self,
        code: str | None = None,
        detail: str = "",
        *,
        status: int | None = None,
        retry_after: int | None = None,
        field: str | None = None,
        body: Any = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.detail = detail
        self.status = status
        # Milliseconds, as the protocol gives it (REST bodies and `error` frames alike).
        self.retry_after = retry_after
        self.field = field
        self.body = body
        where = f"{status} " if status is not None else ""
        super().__init__(f"{where}{self.code}: {detail}" if detail else f"{where}{self.code}")


class BadJson(TetherError):
    code = "bad_json"


class BadRequest(TetherError):
    code = "bad_request"


class UnknownType(TetherError):
    code = "unknown_type"


class NotAuthenticated(TetherError):
    code = "not_authenticated"


class Forbidden(TetherError):
    code = "forbidden"


class NotFound(TetherError):
    code = "not_found"


class TooLarge(TetherError):
    code = "too_large"


class RateLimited(TetherError):
    code = "rate_limited"


class LimitExceeded(TetherError):
    code = "limit_exceeded"


class Internal(TetherError):
    code = "internal"


class Unavailable(TetherError):
    """503: a dependency of the server is down; retrying later is safe."""

    code = "unavailable"


class Disconnected(TetherError):
    """The socket closed (or was not open) before the reply came."""

    code = "disconnected"


class RequestTimeout(TetherError):
    """No reply within the request's timeout."""

    code = "timeout"


class SendFailed(TetherError):
    """A chat `send` was refused, or not acknowledged in time; it stays in the outbox."""

    code = "send_failed"


class WebhookVerificationError(TetherError):
    """A webhook request whose signature or timestamp does not verify."""

    code = "invalid_signature"


_BY_CODE: dict[str, type[TetherError]] = {
    cls.code: cls
    for cls in (
        BadJson,
        BadRequest,
        UnknownType,
        NotAuthenticated,
        Forbidden,
        NotFound,
        TooLarge,
        RateLimited,
        LimitExceeded,
        Internal,
        Unavailable,
    )
}

# When a body carries no code (a proxy's HTML page, an empty 502), the status decides.
_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    429: "rate_limited",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}


def error_for(
    code: str | None,
    detail: str = "",
    *,
    status: int | None = None,
    retry_after: int | None = None,
    field: str | None = None,
    body: Any = None,
) -> TetherError:
    """The exception for a protocol error code (its own subclass when there is one)."""
    by_status = _BY_STATUS.get(status) if status is not None else None
    code = code or by_status or "error"
    # A code this SDK does not know (e.g. `invalid_credentials`) keeps its own string
    # and takes the class of its HTTP status, so `except NotAuthenticated` still works.
    cls = _BY_CODE.get(code) or _BY_CODE.get(by_status or "", TetherError)
    return cls(code, detail, status=status, retry_after=retry_after, field=field, body=body)


def from_frame(frame: dict[str, Any]) -> TetherError:
    """The exception for a socket `error` frame."""
    return error_for(
        frame.get("code"),
        str(frame.get("message") or ""),
        retry_after=frame.get("retry_after"),
        field=frame.get("field"),
        body=frame,
    )
