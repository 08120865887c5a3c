"""A delivery worker: the outbox's webhooks and pushes sent by a process of its own
(`manage.py deliver_outbox`, with `OUTBOX_DELIVERY=worker` on the nodes).

On a node, delivery shares one interpreter with the sockets: each delivered event
costs the node CPU that chat then waits for (docs/benchmarks.md, "Webhooks"). A
worker takes that off the nodes; the nodes only write the rows, in the change's
own transaction as always. Workers claim with the same leases as nodes do
(realtime/hooks/queue.py), so any number may run, on any host, and one killed at
any moment loses nothing: its leases run out and another claims the events again.

A worker is not woken by the nodes' commits: it looks for new events every
`poll_seconds`, and after each answer at once (a conversation's next event follows
its predecessor without waiting for a poll).
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from realtime.hooks.node import Delivery, maintain_outbox

log = logging.getLogger("tether.webhooks")


async def work(stop: asyncio.Event, poll_seconds: float) -> None:
    """Deliver until `stop` is set, then finish what is in flight (each request within
    `WEBHOOK_TIMEOUT`) and write it back."""
    delivery = Delivery(poll_seconds)
    runner = asyncio.create_task(delivery.run())
    maintenance = asyncio.create_task(_maintain(stop))
    log.info(
        "delivery worker started: %s, polling every %gs, %d requests at most",
        "webhooks and pushes" if delivery.only_type == "" else "pushes only (no WEBHOOK_URL)",
        poll_seconds,
        delivery.concurrency,
    )
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
    delivery.stop()
    maintenance.cancel()
    await runner
    log.info("delivery worker stopped")


async def _maintain(stop: asyncio.Event) -> None:
    """The nodes' outbox chores, also here: a deployment of workers keeps its gauges."""
    while not stop.is_set():
        try:
            await maintain_outbox()
        except Exception:
            log.exception("outbox maintenance failed")
        try:
            await asyncio.wait_for(stop.wait(), settings.TETHER_MAINTENANCE_SECONDS)
        except TimeoutError:
            pass
