"""What the sync and async REST clients share: requests described once, answers
decoded once, failures raised as typed errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from .errors import error_for

DEFAULT_TIMEOUT = 10.0
USER_AGENT = "tether-client-python/0.1"


@dataclass(frozen=True)
class Call:
    """One REST call: what to send and how to unwrap a successful answer."""

    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    unwrap: Callable[[Any], Any] = field(default=lambda body: body)


def segment(value: str | int) -> str:
    """A path segment: an external id may hold `@` or `.`, never a `/` that counts."""
    return quote(str(value), safe="")


def headers(token: str | None) -> dict[str, str]:
    found = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if token:
        found["Authorization"] = f"Bearer {token}"
    return found


def build(client: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
    kwargs: dict[str, Any] = {"params": call.params}
    if call.json is not None:
        kwargs["json"] = call.json
    return client.build_request(call.method, call.path, **kwargs)


def result(call: Call, response: httpx.Response) -> Any:
    """The unwrapped body of a 2xx answer; a typed error for anything else."""
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = response.text
    if response.is_success:
        return call.unwrap(body)
    info = body if isinstance(body, dict) else {}
    retry_after = info.get("retry_after")
    if retry_after is None and "Retry-After" in response.headers:
        # The header is in seconds; the protocol's field (and ours) in milliseconds.
        try:
            retry_after = int(float(response.headers["Retry-After"]) * 1000)
        except ValueError:
            retry_after = None
    detail = info.get("detail") or (body if isinstance(body, str) else "") or response.reason_phrase
    raise error_for(
        info.get("error"),
        str(detail)[:500],
        status=response.status_code,
        retry_after=retry_after,
        field=info.get("field"),
        body=body,
    )
