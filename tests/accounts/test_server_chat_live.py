"""The backend's chat rows over real HTTP and sockets on two nodes (PROTOCOL 12): what
the backend does reaches members live on whichever node holds their sockets, and a
system message is `sender: null` in the live frame, in `sync` and in history."""

from __future__ import annotations

from typing import Any

from tests.support.chat import expect_skipping, person, quiet
from tests.support.live import DaphneNode, http, manage
from tests.support.names import unique


def service_api(node: DaphneNode) -> Any:
    name = unique("svc")
    node.register(name)
    token = manage(node.stack.env(), "issue_token", name, "--scope", "chat").stdout.strip()

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, data, _ = http(method, node.url + path, body, {"Authorization": f"Bearer {token}"})
        return status, data

    return call


async def test_the_backend_chats_live_across_nodes(two_nodes) -> None:
    one, two = two_nodes
    backend = service_api(one)
    ann, bob = person(one, "ann"), person(two, "bob")
    a, b = await ann.socket(one), await bob.socket(two)

    status, conv = backend(
        "POST",
        "/api/server/conversations/",
        {"kind": "group", "title": "news", "members": [ann.id]},
    )
    assert status == 201 and conv["created_by"] is None, conv
    cid = conv["id"]
    joined = await expect_skipping(a, "joined", keep=True)
    assert joined["conversation"]["id"] == cid

    path = f"/api/server/conversations/{cid}/members/"
    assert backend("POST", path, {"user": bob.id})[0] == 201
    assert (await expect_skipping(b, "joined", keep=True))["conversation"]["id"] == cid

    status, sent = backend(
        "POST",
        f"/api/server/conversations/{cid}/messages/",
        {"id": "hello-1", "body": "Maintenance at noon", "sender": None},
    )
    assert status == 201, sent
    for socket in (a, b):
        live = await expect_skipping(socket, "message", keep=True)
        assert (live["sender"], live["body"], live["seq"]) == (None, "Maintenance at noon", 1)
        assert live["message_id"] == sent["message_id"]

    # The same key again: the stored message, and nothing new on any socket.
    status, again = backend(
        "POST",
        f"/api/server/conversations/{cid}/messages/",
        {"id": "hello-1", "body": "Maintenance at noon", "sender": None},
    )
    assert (status, again["duplicate"], again["seq"]) == (200, True, 1)
    # As a member: stored in that member's key space, delivered as theirs.
    status, as_ann = backend(
        "POST",
        f"/api/server/conversations/{cid}/messages/",
        {"id": "hello-1", "body": "from ann", "sender": ann.id},
    )
    assert (status, as_ann["seq"], as_ann["sender"]["id"]) == (201, 2, ann.id)
    nxt = await expect_skipping(b, "message", keep=True)
    assert (nxt["seq"], nxt["sender"]["id"]) == (2, ann.id)  # seq 1 did not come twice

    # A fresh socket's sync replays the system message with its null sender.
    late = await bob.socket(one)
    await late.send({"type": "sync", "id": "s", "positions": {cid: 0}})
    replay = [await expect_skipping(late, "message", keep=True) for _ in range(2)]
    assert [(m["seq"], m["sender"] and m["sender"]["id"]) for m in replay] == [
        (1, None),
        (2, ann.id),
    ]
    status, history = bob.api(two, "GET", f"/api/conversations/{cid}/messages/")
    assert history["messages"][0]["sender"] is None

    # Removed by the backend: `left`, then nothing more of that conversation.
    status, _ = backend("DELETE", f"{path}{bob.id}/")
    assert status == 204
    assert (await expect_skipping(b, "left", keep=True))["conversation"] == cid
    backend(
        "POST",
        f"/api/server/conversations/{cid}/messages/",
        {"id": "after", "body": "not for bob", "sender": None},
    )
    seen = [(await expect_skipping(a, "message", keep=True))["body"] for _ in range(2)]
    assert seen == ["from ann", "not for bob"]
    assert [m for m in await quiet(b, "message") if m["conversation"] == cid and m["seq"] > 2] == []
    for socket in (a, b, late):
        await socket.close()
