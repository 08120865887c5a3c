"""A fake Web Push service for tests: a threaded HTTP server on 127.0.0.1 that plays
the browser's push service and the browser at once. Each subscription it hands out
has its own receiver key pair and auth secret (made here with `cryptography`, as a
browser makes them); each push is decrypted with them (RFC 8291, `http_ece`) and its
VAPID header verified (RFC 8292: ES256 with the key in `k`, `aud` the endpoint's
origin, `exp` within 24 h, `sub`). It can answer a given status a number of times
first, with a `Retry-After`."""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.services import free_port


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """What a browser keeps: the endpoint and its private half of the keys."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    def to_json(self) -> dict[str, Any]:
        """`PushSubscription.toJSON()`."""
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)},
        }


@dataclass
class Push:
    """One push as received: the subscription's token, headers, decrypted payload (None
    when it did not decrypt), the VAPID claims (None when they did not verify), the
    public key that signed them and the status answered."""

    token: str
    headers: dict[str, str]
    payload: dict[str, Any] | None
    claims: dict[str, Any] | None
    vapid_key: str
    answered: int
    at: float = field(default_factory=time.monotonic)


def verify_vapid(authorization: str, audience: str) -> tuple[dict[str, Any] | None, str]:
    """`vapid t=<JWT>, k=<key>` → (claims, key) when the ES256 signature holds with `k`,
    `aud` is the origin and `exp` within 24 h (RFC 8292, sections 2 and 3)."""
    scheme, _, rest = authorization.partition(" ")
    if scheme.lower() != "vapid":
        return None, ""
    parts = dict(p.strip().split("=", 1) for p in rest.split(",") if "=" in p)
    key = parts.get("k", "")
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        claims = jwt.decode(parts.get("t", ""), public, algorithms=["ES256"], audience=audience)
    except (ValueError, jwt.PyJWTError):
        return None, key
    if not (time.time() < claims["exp"] <= time.time() + 86400):
        return None, key
    return claims, key


class PushService:
    """Start with `start()`; `subscription()` hands out a new subscription."""

    def __init__(self) -> None:
        self.port = free_port()
        self.pushes: list[Push] = []
        self.keys: dict[str, Subscription] = {}
        # token → [(status, Retry-After or None), …] to answer first, in order.
        self.answers: dict[str, list[tuple[int, str | None]]] = {}
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def subscription(self) -> tuple[str, Subscription]:
        token = secrets.token_urlsafe(12)
        sub = Subscription(
            f"{self.origin}/push/{token}", ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
        )
        self.keys[token] = sub
        return token, sub

    def start(self) -> PushService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                token = self.path.rsplit("/", 1)[-1]
                sub = service.keys.get(token)
                payload = None
                if sub is not None and headers.get("Content-Encoding") == "aes128gcm":
                    try:
                        plain = http_ece.decrypt(
                            raw, private_key=sub.private_key, auth_secret=sub.auth
                        )
                        payload = json.loads(plain)
                    except Exception:
                        payload = None
                claims, key = verify_vapid(headers.get("Authorization", ""), service.origin)
                status, retry_after = 201, None
                queued = service.answers.get(token)
                if sub is None:
                    status = 410
                elif queued:
                    status, retry_after = queued.pop(0)
                with service._changed:
                    service.pushes.append(Push(token, headers, payload, claims, key, status))
                    service._changed.notify_all()
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of(self, token: str, delivered_only: bool = True) -> list[Push]:
        with self._changed:
            return [
                p
                for p in self.pushes
                if p.token == token and (not delivered_only or 200 <= p.answered < 300)
            ]

    def wait_for(self, check: Any, timeout: float, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = check(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
                self._changed.wait(min(left, 0.5))
