from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from realtime.chat.consumer import ChatConsumer
from realtime.topics.consumer import StreamConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/stream/", StreamConsumer.as_asgi()),
    # Any other path: refuse the handshake (HTTP 403) instead of crashing the router.
    re_path(r"", WebsocketDenier.as_asgi()),
]
