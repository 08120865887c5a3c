"""One SDK-ready node per mode for the folder; each test makes users of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tether_client import Server

from tests.support.sdk import SCOPES, App, service_token, start_node


@pytest.fixture(scope="package", params=["embedded", "production"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    stack = request.getfixturevalue(f"{request.param}_stack")
    node = start_node(stack, tmp_path_factory.mktemp("sdk"))
    token = service_token(node, *SCOPES)
    with Server(node.url, token) as server:
        yield App(node, server, token)
    node.stop()
