"""Live nodes set up for the Python SDK's tests: connection tokens on, service tokens
with scopes, a topic namespace behind subscription tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tether_client import Server, connection_token

from tests.support.live import DaphneNode, Stack, manage
from tests.support.names import unique

SECRET = "s" * 48
AUDIENCE = "tether-tests"
ISSUER = "https://app.example.com"
SCOPES = ("publish", "chat", "users", "presence", "connections")
NAMESPACES = {
    "prices": {"history_size": 1000, "history_ttl": 3600, "access": "open"},
    "room": {"history_size": 100, "history_ttl": 600, "access": "token"},
}
SETTINGS = {
    "JWT_SECRET": SECRET,
    "JWT_AUDIENCE": AUDIENCE,
    "JWT_ISSUER": ISSUER,
    "TOPIC_NAMESPACES": json.dumps(NAMESPACES),
}

# For tests whose subject does not depend on the stack (token checks, REST error
# shapes, node-local timers): the `app` fixture on one stack, to keep `make test` short.
one_stack = pytest.mark.parametrize("app", ["embedded"], indirect=True)


def start_node(stack: Stack, log_dir: Path, name: str = "", **settings: str) -> DaphneNode:
    node = DaphneNode(
        stack=stack, name=name or unique("sdk-"), log_dir=log_dir, settings=SETTINGS | settings
    )
    return node.start()


def service_token(node: DaphneNode, *scopes: str) -> str:
    """An API token of a new user with exactly `scopes`."""
    name = unique("svc")
    node.register(name)
    args = ["issue_token", name, "--name", "sdk-tests"]
    if scopes:
        args += ["--scope", ",".join(scopes)]
    return manage(node.stack.env(), *args).stdout.strip()


def mint(sub: str, ttl: float = 300, **options: Any) -> str:
    """A connection token the way an application's backend signs one with the SDK."""
    return connection_token(SECRET, sub, ttl, audience=AUDIENCE, issuer=ISSUER, **options)


@dataclass
class App:
    """One node and the application's backend in front of it."""

    node: DaphneNode
    server: Server
    service: str

    def user(self, prefix: str = "app-") -> tuple[str, dict[str, Any]]:
        """A new application user put on Tether: (external id, user representation)."""
        sub = unique(prefix)
        return sub, self.server.put_user(sub, username=unique("n"))

    @property
    def ws(self) -> str:
        return self.node.ws_url
