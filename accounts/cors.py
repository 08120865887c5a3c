"""CORS for `POST /api/auth/ws-ticket/` only (PROTOCOL 11): a page on another origin
trades the connection token its backend signed for a socket ticket.

django-cors-headers answers the preflight and adds the headers; whether an origin
may is Tether's one origin rule (`realtime/transport/origin.py`, default ports made
explicit on both sides), the same as for the sockets.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

from realtime.transport.origin import normalize_origin


def allowed_origin(sender: Any, request: Any, **kwargs: Any) -> bool:
    """`check_request_enabled`: an Origin listed in ALLOWED_ORIGINS (when unset, only
    the server's own origins are allowed, and those need no CORS)."""
    # django-cors-headers asks this both whether a path answers CORS at all and
    # whether an origin may: the path is checked here too.
    if not re.match(settings.CORS_URLS_REGEX, request.path_info):
        return False
    origin = request.headers.get("origin")
    if not origin or settings.ALLOWED_ORIGINS_IS_DEFAULT:
        return False
    try:
        wanted = normalize_origin(origin)
    except ValueError:
        return False
    return wanted in {normalize_origin(o) for o in settings.ALLOWED_ORIGINS}
