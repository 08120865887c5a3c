"""JSON, not pickle, for what the cache keeps in Redis.

Django's Redis cache pickles every value, and unpickling runs code: anyone who can
write to that Redis (a shared instance, a leaked password) could run code on every
node. Tether caches only plain values (rate-limit histories, typing marks), so
JSON carries them. Integers stay raw, as Django stores them, for `incr`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("tether.cache")


class JSONSerializer:
    """`serializer` for Django's RedisCache (settings.CACHES)."""

    def dumps(self, obj: Any) -> int | bytes:
        if type(obj) is int:  # not bool: `True` must come back as `True`
            return obj
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            pass
        try:
            return json.loads(data)
        except ValueError:
            # Not written by Tether (a pickle, say): never decoded, counted as absent.
            log.warning("cache value that is not JSON ignored (%d bytes)", len(data))
            return None
