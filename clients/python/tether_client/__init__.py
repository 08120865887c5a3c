"""Tether's Python SDK.

Server side: `Server` / `AsyncServer` (the backend API), `connection_token` and
`subscription_token` (PROTOCOL 11), `verify_webhook` (PROTOCOL 13).
Client side (asyncio): `ChatClient` (`/ws/chat/`) and `StreamClient` (`/ws/stream/`).
Failures: `TetherError` and its subclasses, one per protocol error code.
"""

from .backoff import backoff_delay
from .chat import ChatClient, Outgoing, apply_event, random_id
from .connection import Connection
from .credentials import fetch_ticket
from .errors import (
    BadJson,
    BadRequest,
    Disconnected,
    Forbidden,
    Internal,
    LimitExceeded,
    NotAuthenticated,
    NotFound,
    RateLimited,
    RequestTimeout,
    SendFailed,
    TetherError,
    TooLarge,
    Unavailable,
    UnknownType,
    WebhookVerificationError,
    error_for,
)
from .events import Event, EventStream
from .refs import external, user_ref
from .server import AsyncServer, Server
from .stream import StreamClient, Topic
from .tokens import connection_token, subscription_token
from .webhooks import signature, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "AsyncServer",
    "BadJson",
    "BadRequest",
    "ChatClient",
    "Connection",
    "Disconnected",
    "Event",
    "EventStream",
    "Forbidden",
    "Internal",
    "LimitExceeded",
    "NotAuthenticated",
    "NotFound",
    "Outgoing",
    "RateLimited",
    "RequestTimeout",
    "SendFailed",
    "Server",
    "StreamClient",
    "TetherError",
    "TooLarge",
    "Topic",
    "Unavailable",
    "UnknownType",
    "WebhookVerificationError",
    "apply_event",
    "backoff_delay",
    "connection_token",
    "error_for",
    "external",
    "fetch_ticket",
    "random_id",
    "signature",
    "subscription_token",
    "user_ref",
    "verify_webhook",
]
