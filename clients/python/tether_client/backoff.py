"""Reconnect delays (PROTOCOL 4): full jitter, for ever, reset after 30 s up."""

from __future__ import annotations

import random as _random
from collections.abc import Callable

BASE = 0.5
MAX = 30.0
# A connection that stayed up this long proves the trouble is over.
RESET_AFTER = 30.0
# 1012: the node drains and asks for 0 to 2 s, whatever the attempt.
RESTART_WINDOW = 2.0


def backoff_delay(attempt: int, random: Callable[[], float] = _random.random) -> float:
    """Seconds before attempt `attempt + 1`: random(0, min(30, 0.5 * 2^attempt))."""
    cap = min(MAX, BASE * 2 ** min(attempt, 16))
    return random() * cap
