"""A demo price tick for `make run` (`DEMO_FEED`): something live on the feeds page."""

from __future__ import annotations

import asyncio
import logging
import random

from realtime.topics import apublish

log = logging.getLogger("tether.demo")


async def run_demo_feed(topic: str, period: float = 1.0) -> None:
    """Publish a random-walk bid/ask to `topic` every `period` seconds, forever."""
    price = 100.0
    while True:
        price = max(1.0, price * (1 + random.gauss(0, 0.002)))
        spread = round(price * 0.0005, 4)
        try:
            await apublish(topic, {"bid": round(price, 4), "ask": round(price + spread, 4)})
        except Exception:
            log.warning("demo feed could not publish to %s", topic, exc_info=True)
        await asyncio.sleep(period)
