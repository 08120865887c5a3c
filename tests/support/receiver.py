"""A webhook receiver for tests: a threaded HTTP server on 127.0.0.1 that records each
request, verifies its signature (PROTOCOL 13), and can be told to answer with an
error, to hang, or to go away and come back on the same port."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.services import free_port

SECRET = "test-webhook-secret-0123456789"


@dataclass(frozen=True)
class Request:
    """One request as received: headers, raw body, decoded event, signature verdict."""

    headers: dict[str, str]
    raw: bytes
    event: dict[str, Any]
    signed: bool
    answered: int


def verify(secret: str, headers: dict[str, str], raw: bytes) -> bool:
    """The receiver's check, as docs/integration.md shows it."""
    timestamp = headers.get("Tether-Timestamp", "")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256)
    given = headers.get("Tether-Signature", "")
    return hmac.compare_digest(given, "v1=" + expected.hexdigest())


class Receiver:
    """Start with `start()`; `url` is what WEBHOOK_URL should be."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.port = free_port()
        self.requests: list[Request] = []
        self.status = 200  # what to answer
        self.hang = 0.0  # seconds to wait before answering
        self.fail_ids: dict[str, int] = {}  # event id → answers of 500 still to give
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                if receiver.hang:
                    time.sleep(receiver.hang)  # a receiver thread that hangs
                event = json.loads(raw)
                status = receiver.status
                left = receiver.fail_ids.get(event["id"], 0)
                if left:
                    receiver.fail_ids[event["id"]] = left - 1
                    status = 500
                with receiver._changed:
                    receiver.requests.append(
                        Request(headers, raw, event, verify(receiver.secret, headers, raw), status)
                    )
                    receiver._changed.notify_all()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Go away: connections to the port are refused until `start()` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Request]:
        """Requests answered 2xx, in arrival order."""
        with self._changed:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        """Delivered events, first delivery of each id only (what a deduplicating
        receiver keeps), in arrival order."""
        seen: set[str] = set()
        out = []
        for r in self.delivered():
            if r.event["id"] in seen:
                continue
            seen.add(r.event["id"])
            if type_ is None or r.event["type"] == type_:
                out.append(r.event)
        return out

    def wait_for(self, check: Any, timeout: float, what: str = "") -> Any:
        """Block until `check(self)` is truthy (woken by each request); its value."""
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
