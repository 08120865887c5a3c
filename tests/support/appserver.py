"""The application's own web server in tests: a page on an origin other than Tether's
(listed in ALLOWED_ORIGINS), and the routes of "its backend" that the page calls,
as an application beside Tether has them (docs/integration.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Route = Callable[[dict[str, str]], str]


class AppOrigin:
    """`/` answers `page` (HTML); each path in `routes` answers its function of the
    query string (text/plain); anything else 404."""

    def __init__(self) -> None:
        self.page = ""
        self.routes: dict[str, Route] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/":
                    body, kind = app.page, "text/html"
                elif url.path in app.routes:
                    body, kind = app.routes[url.path](query), "text/plain"
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
