"""Topic helpers for live tests: publish over REST, open /ws/stream/, subscribe, read pubs."""

from __future__ import annotations

from typing import Any

from tests.support.live import DaphneNode, http
from tests.support.wsclient import WsClient


def publish(node: DaphneNode, token: str, topic: str, data: Any) -> tuple[int, dict[str, Any]]:
    status, body, _ = http(
        "POST",
        f"{node.url}/api/topics/{topic}/publish/",
        {"data": data},
        {"Authorization": f"Bearer {token}"},
    )
    return status, body


def published(node: DaphneNode, token: str, topic: str, data: Any) -> dict[str, Any]:
    status, body = publish(node, token, topic, data)
    assert status == 201, body
    return body


async def stream(node: DaphneNode, token: str) -> WsClient:
    client = await WsClient.open(f"{node.ws_url}/ws/stream/", token=token)
    await client.welcome()
    return client


async def subscribe(client: WsClient, topic: str, since: dict | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "subscribe", "id": "s1", "topic": topic}
    if since is not None:
        frame["since"] = since
    await client.send(frame)
    return await client.expect("subscribed")


async def pubs(client: WsClient, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    return [await client.expect("pub", timeout) for _ in range(count)]
