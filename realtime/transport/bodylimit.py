"""Request bodies bounded before Django spools them (docs/security.md, "Limits").

Django's ASGI handler reads a request's whole body into a temporary file before
any view runs, whatever its size; its own limits (`DATA_UPLOAD_MAX_MEMORY_SIZE`)
are checked later, when the view reads it, and exclude uploaded files. For the
paths that take large bodies (attachment uploads), this middleware answers 413
`too_large` in the REST error shape as soon as it knows better:

- a `Content-Length` over the bound: at once, before any of the body is read;
- a body that grows past the bound while it arrives (no `Content-Length`, or one
  that lies): at that chunk; Django is told the client went away
  (`http.disconnect`), so it stops reading and answers nothing itself.

Under uvicorn the body streams in, so nothing beyond the bound is ever taken.
daphne (Twisted) receives a whole request before it calls the application, so
there the bound saves Django's copy and the view's work; nginx in front
(`client_max_body_size`) is what refuses early in production.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from realtime.protocol import Code

# scope -> the largest body allowed on that request, or None: not bounded here.
Bound = Callable[[dict[str, Any]], int | None]


def declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def refuse(send: Any, detail: str, **extra: Any) -> None:
    body = json.dumps({"error": Code.TOO_LARGE, "detail": detail, **extra}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """413 `too_large` for bodies over `bound(scope)` (ASGI HTTP only)."""

    def __init__(self, app: Any, bound: Bound, detail: Callable[[int], dict[str, Any]]) -> None:
        self.app = app
        self.bound = bound
        # The limit the caller is told (the file's, not the body's) and its words.
        self.detail = detail

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        bound = self.bound(scope)
        if bound is None:
            return await self.app(scope, receive, send)
        length = declared_length(scope)
        if length is not None and length > bound:
            return await refuse(send, **self.detail(bound))
        seen = 0
        refused = False

        async def bounded_receive() -> dict[str, Any]:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > bound:
                    refused = True
                    await refuse(send, **self.detail(bound))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not refused:  # after the 413, nothing more goes out for this request
                await send(message)

        return await self.app(scope, bounded_receive, guarded_send)
