"""`manage.py deliver_outbox`: send the outbox's webhooks and pushes from a process of
its own (docs/webhooks.md, "A delivery worker")."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.hooks import worker


class Command(BaseCommand):
    help = (
        "Deliver the outbox's webhooks and Web Push messages until SIGTERM or Ctrl-C "
        "(run with OUTBOX_DELIVERY=worker on the nodes; any number of workers may run)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--poll",
            type=float,
            default=0.5,
            help="seconds between looks for new events (default 0.5)",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=0,
            help="serve Prometheus metrics on 127.0.0.1:PORT (/metrics); default: none",
        )
        parser.add_argument(
            "--metrics-host", default="127.0.0.1", help="address for --metrics-port"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["poll"] <= 0:
            raise CommandError("--poll must be above 0")
        if settings.OUTBOX_DELIVERY != "worker":
            self.stderr.write(
                "note: OUTBOX_DELIVERY is 'nodes' here: the nodes deliver as well "
                "(harmless: claims are leased, so each event is sent by one of them)"
            )
        if options["metrics_port"]:
            from prometheus_client import start_http_server

            start_http_server(options["metrics_port"], addr=options["metrics_host"])
        asyncio.run(self._run(options["poll"]))

    async def _run(self, poll: float) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await worker.work(stop, poll)
