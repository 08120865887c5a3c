"""Helpers for chat integration tests: users, conversations and sockets on live nodes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tests.support.live import DaphneNode, http
from tests.support.names import unique
from tests.support.wsclient import WsClient


@dataclass
class Person:
    """A registered user with an API token."""

    id: int
    username: str
    token: str

    def api(self, node: DaphneNode, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, data, _ = http(
            method, node.url + path, body, {"Authorization": f"Bearer {self.token}"}
        )
        return status, data

    async def socket(self, node: DaphneNode, endpoint: str = "chat") -> WsClient:
        client = await WsClient.open(f"{node.ws_url}/ws/{endpoint}/", token=self.token)
        await client.welcome()
        return client


def person(node: DaphneNode, prefix: str = "p") -> Person:
    name = unique(prefix)
    token = node.register(name)
    status, me, _ = http("GET", node.url + "/api/me/", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, me
    return Person(me["id"], name, token)


def group(node: DaphneNode, creator: Person, *members: Person, title: str = "team") -> str:
    status, body = creator.api(
        node,
        "POST",
        "/api/conversations/",
        {"kind": "group", "title": title, "members": [m.id for m in members]},
    )
    assert status == 201, body
    return body["id"]


async def two_in_a_group(node: DaphneNode, sent_before: int) -> tuple[Person, str, WsClient]:
    """Alice and Bob in a group where Bob has sent `sent_before` messages: (alice,
    the conversation, Bob's socket)."""
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    b = await bob.socket(node)
    for n in range(sent_before):
        await send(b, cid, f"before {n}")
    return alice, cid, b


async def send(client: WsClient, conversation: str, body: str, cid: str | None = None) -> dict:
    """Send and wait for the ack (messages arriving meanwhile are kept for later)."""
    cid = cid or unique("m")
    await client.send({"type": "send", "id": cid, "conversation": conversation, "body": body})
    return await expect_skipping(client, "ack", keep=True)


async def expect_skipping(
    client: WsClient, frame_type: str, timeout: float = 5, keep: bool = False
):
    """The next frame of `frame_type`; other frames are stashed (keep) or dropped (pings)."""
    stash = client.__dict__.setdefault("stash", [])
    for i, frame in enumerate(stash):
        if frame["type"] == frame_type:
            return stash.pop(i)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        if frame["type"] == frame_type:
            return frame
        if frame["type"] != "ping" and keep:
            stash.append(frame)


async def collect(client: WsClient, frame_type: str, count: int, timeout: float = 10) -> list[dict]:
    """`count` frames of `frame_type`, in arrival order."""
    out = []
    for _ in range(count):
        out.append(await expect_skipping(client, frame_type, timeout, keep=True))
    return out


async def quiet(client: WsClient, frame_type: str, seconds: float = 0.5) -> list[dict]:
    """Frames of `frame_type` arriving within `seconds` (to prove none come)."""
    got = [f for f in client.__dict__.get("stash", []) if f["type"] == frame_type]
    try:
        async with asyncio.timeout(seconds):
            while True:
                frame = await client.recv(seconds)
                if frame["type"] == frame_type:
                    got.append(frame)
    except TimeoutError:
        pass
    return got


async def expect_message_from(client: WsClient, sender_id: int, timeout: float = 5) -> dict:
    """The next `message` frame sent by `sender_id` (others' are passed over)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await expect_skipping(client, "message", max(0.01, deadline - loop.time()), True)
        if frame["sender"]["id"] == sender_id:
            return frame
