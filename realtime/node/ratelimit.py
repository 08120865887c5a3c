"""Per-connection token bucket (PROTOCOL 8)."""

from __future__ import annotations

import math


class TokenBucket:
    """`rate` tokens a second up to `burst`; one token per frame."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> int:
        """0 if a token was taken, else milliseconds until one is available."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate * 1000))
