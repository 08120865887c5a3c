"""Refuse WebSocket handshakes from foreign origins with HTTP 403 before accept."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings


def normalize_origin(origin: str) -> str:
    """`scheme://host:port` with the default port made explicit, lower-cased."""
    parts = urlsplit(origin.strip())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}:{port}"


def header(scope: dict[str, Any], name: bytes) -> str | None:
    """One request header of an ASGI scope, decoded, or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def allowed_origins(scope: dict[str, Any]) -> set[str]:
    """ALLOWED_ORIGINS, or by default the server's own origins on its real port."""
    origins = set(settings.ALLOWED_ORIGINS)
    if settings.ALLOWED_ORIGINS_IS_DEFAULT:
        server = scope.get("server")
        if server and server[1]:
            port = server[1]
            origins |= {f"http://127.0.0.1:{port}", f"http://localhost:{port}"}
    return {normalize_origin(o) for o in origins}


def origin_allowed(origin: str, scope: dict[str, Any]) -> bool:
    """Exact scheme://host:port match; `null` and anything unparsable refused."""
    origin = origin.strip()
    if not origin or origin == "null" or "://" not in origin:
        return False
    if "/" in origin.split("://", 1)[1] or "?" in origin or "#" in origin:
        return False  # an Origin is scheme://host[:port], nothing more
    try:
        normalized = normalize_origin(origin)
    except ValueError:
        return False
    if normalized.split("://", 1)[0] not in ("http", "https"):
        return False
    return normalized in allowed_origins(scope)


class OriginCheckMiddleware:
    """A present, foreign Origin gets 403; the scope records whether it matched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        origin = header(scope, b"origin")
        if origin is not None and not origin_allowed(origin, scope):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        # Cookies are only trusted with an allowed Origin: a page elsewhere
        # cannot ride the browser's session (cross-site WebSocket hijacking).
        # Set in place: every socket has its own scope, and a copy per middleware
        # layer would live as long as the socket (memory per idle connection).
        scope["tether_origin_ok"] = origin is not None
        return await self.app(scope, receive, send)
