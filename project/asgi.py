"""ASGI entry point: origin check, then credentials, then the socket router."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

import sys  # noqa: E402

from realtime.transport import patches  # noqa: E402

# An upgrade that reshaped what a patch replaces stops the node here, one line per
# patch (docs/architecture.md, "Server internals"), before anything is replaced.
if _unfit := patches.problems():
    sys.stderr.write("".join(f"tether: {line}\n" for line in _unfit))
    raise SystemExit(2)

from project.automigrate import migrate_if_needed  # noqa: E402

migrate_if_needed()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.ws_auth import SessionIfCookie, WebSocketAuthMiddleware  # noqa: E402
from realtime.chat import uploads  # noqa: E402
from realtime.node.runtime import NodeStartMiddleware  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402
from realtime.transport.backpressure import RawSendMiddleware  # noqa: E402
from realtime.transport.bodylimit import BodyLimitMiddleware  # noqa: E402
from realtime.transport.daphne_compat import patch_daphne_close_codes  # noqa: E402
from realtime.transport.handshakes import HandshakeLimitMiddleware  # noqa: E402
from realtime.transport.origin import OriginCheckMiddleware  # noqa: E402
from realtime.transport.uvicorn_compat import patch_uvicorn_upgrade_leftovers  # noqa: E402

patch_daphne_close_codes()
patch_uvicorn_upgrade_leftovers()


def build_application(websocket_routes: list[Any]) -> Any:
    """Tether's middleware stack around `websocket_routes` (and Django for HTTP)."""
    return RawSendMiddleware(
        NodeStartMiddleware(
            ProtocolTypeRouter(
                {
                    # Attachment uploads: bodies over the limit refused before Django
                    # spools them (realtime/transport/bodylimit.py).
                    "http": BodyLimitMiddleware(
                        django_asgi_app, uploads.upload_bound, uploads.upload_refusal
                    ),
                    "websocket": OriginCheckMiddleware(
                        HandshakeLimitMiddleware(
                            SessionIfCookie(WebSocketAuthMiddleware(URLRouter(websocket_routes)))
                        )
                    ),
                }
            )
        )
    )


application = build_application(websocket_urlpatterns)
