"""Tether's application plus the benchmark's baseline at `/ws/plain/`
(`bench/plain_consumer.py`), behind the same middleware: what `bench/feeds_bench.py`
serves, so that Tether itself never imports the benchmarks."""

from __future__ import annotations

from django.urls import path

from bench.plain_consumer import PlainFeedConsumer
from project.asgi import build_application
from realtime.routing import websocket_urlpatterns

application = build_application(
    [path("ws/plain/", PlainFeedConsumer.as_asgi()), *websocket_urlpatterns]
)
