"""ASGI entry point: origin check, then credentials, then the socket router."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from project.automigrate import migrate_if_needed  # noqa: E402

migrate_if_needed()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.ws_auth import SessionIfCookie, WebSocketAuthMiddleware  # noqa: E402
from project.daphne_compat import patch_daphne_close_codes  # noqa: E402
from project.uvicorn_compat import patch_uvicorn_upgrade_leftovers  # noqa: E402
from realtime.backpressure import RawSendMiddleware  # noqa: E402
from realtime.origin import OriginCheckMiddleware  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402
from realtime.runtime import NodeStartMiddleware  # noqa: E402

patch_daphne_close_codes()
patch_uvicorn_upgrade_leftovers()

application = RawSendMiddleware(
    NodeStartMiddleware(
        ProtocolTypeRouter(
            {
                "http": django_asgi_app,
                "websocket": OriginCheckMiddleware(
                    SessionIfCookie(WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns)))
                ),
            }
        )
    )
)
