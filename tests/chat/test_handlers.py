"""Frame handlers of `/ws/chat/` (PROTOCOL 6) through a WebsocketCommunicator."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from realtime.models import Membership, Message
from tests.support.focused import WAIT, chat, group, person

pytestmark = pytest.mark.django_db(transaction=True)

QUIET = 0.3  # how long "nothing arrives" is watched for
NOT_A_MEMBER = "you are not a member of that conversation"


async def until(comm: WebsocketCommunicator, frame_type: str) -> tuple[dict, list[dict]]:
    """The next frame of `frame_type` and the frames that came before it."""
    before: list[dict[str, Any]] = []
    while (frame := await comm.receive_json_from(WAIT))["type"] != frame_type:
        before.append(frame)
    return frame, before


async def still_open(comm: WebsocketCommunicator) -> None:
    """The socket still answers (an error did not close it)."""
    await comm.send_json_to({"type": "ping", "ts": 7})
    assert (await comm.receive_json_from(WAIT))["type"] == "pong"


async def drain(comm: WebsocketCommunicator) -> set[str]:
    """The types of the frames that arrive until the socket has been quiet a while."""
    types = set()
    while not await comm.receive_nothing(QUIET):
        types.add((await comm.receive_json_from(WAIT))["type"])
    return types


def bad_request(request_id: str, field: str) -> dict[str, Any]:
    """The `bad_request` error PROTOCOL 3 and 6 give for an integer field below 0 or of the
    wrong type."""
    return {
        "type": "error",
        "id": request_id,
        "code": "bad_request",
        "message": f"{field}: must be an integer >= 0",
        "field": field,
    }


async def test_send_acks_with_seq_and_a_repeated_id_is_the_stored_duplicate(runtime) -> None:
    """The same `id` again answers the stored message's ack, `duplicate: true`, stores nothing."""
    alice, token = await person()
    cid = (await group(alice)).pk
    comm = await chat(token)
    await comm.send_json_to({"type": "send", "id": "m1", "conversation": cid, "body": "hello"})
    ack, before = await until(comm, "ack")
    assert ack == {**ack, "id": "m1", "conversation": cid, "seq": 1, "duplicate": False}
    assert ack["message_id"].startswith("m_") and isinstance(ack["ts"], int)
    message = before[0] if before else (await comm.receive_json_from(WAIT))
    assert message["type"] == "message" and message["seq"] == 1 and message["client_id"] == "m1"
    again = {"type": "send", "id": "m1", "conversation": "nope", "body": "other"}
    await comm.send_json_to(again)
    assert await comm.receive_json_from(WAIT) == {**ack, "duplicate": True}
    assert await comm.receive_nothing(QUIET)  # neither stored nor delivered again
    await comm.send_json_to({"type": "send", "id": "m2", "conversation": cid, "body": "next"})
    second, _ = await until(comm, "ack")
    assert second["seq"] == 2 and second["duplicate"] is False
    count = database_sync_to_async(Message.objects.filter(conversation_id=cid).count)
    assert await count() == 2
    await comm.disconnect()


@pytest.mark.parametrize("seq", [-1, "3", 1.5, True, None])
async def test_read_with_a_bad_seq_is_bad_request_and_keeps_the_socket(runtime, seq: Any) -> None:
    """`seq` must be an integer >= 0: the error names it and the socket stays open."""
    alice, token = await person()
    cid = (await group(alice)).pk
    comm = await chat(token)
    await comm.send_json_to({"type": "read", "id": "r1", "conversation": cid, "seq": seq})
    assert await comm.receive_json_from(WAIT) == bad_request("r1", "seq")
    await still_open(comm)
    await comm.disconnect()


async def test_read_has_no_reply_and_the_receipt_goes_to_the_others(runtime) -> None:
    """A valid `read` is stored up to `last_seq` and told to the other members only."""
    (alice, a_token), (bob, b_token) = await person(), await person()
    cid = (await group(alice, bob)).pk
    b = await chat(b_token)
    a = await chat(a_token)
    await a.send_json_to({"type": "send", "id": "m1", "conversation": cid, "body": "x"})
    await until(a, "ack")
    await b.send_json_to({"type": "read", "id": "r", "conversation": cid, "seq": 99})
    receipt, _ = await until(a, "receipt")
    user = {"id": bob.pk, "username": bob.username}
    assert receipt == {"type": "receipt", "conversation": cid, "seq": 1, "user": user}
    assert await drain(b) <= {"presence", "message"}  # no reply, no receipt of its own
    membership = Membership.objects.filter(conversation_id=cid, user=bob)
    assert (await membership.aget()).read_seq == 1
    await a.disconnect()
    await b.disconnect()


@pytest.mark.parametrize("position", [-1, "0", 2.5])
async def test_sync_with_a_bad_position_names_it(runtime, position: Any) -> None:
    """Each position is an integer >= 0: `bad_request` with `field: positions.<id>`."""
    alice, token = await person()
    cid = (await group(alice)).pk
    comm = await chat(token)
    await comm.send_json_to({"type": "sync", "id": "s2", "positions": {cid: position}})
    assert await comm.receive_json_from(WAIT) == bad_request("s2", f"positions.{cid}")
    await comm.send_json_to({"type": "sync", "id": "s3", "positions": [cid]})
    error = await comm.receive_json_from(WAIT)
    assert error["code"] == "bad_request" and error["field"] == "positions"
    assert error["id"] == "s3" and error["message"].startswith("positions: ")
    await comm.send_json_to({"type": "sync", "id": "s4", "positions": {cid: 0}})
    synced, _ = await until(comm, "synced")
    assert synced["id"] == "s4" and synced["conversations"][cid]["seq"] == 0
    await comm.disconnect()


async def test_typing_outside_ones_conversations_is_forbidden(runtime) -> None:
    """Not a member and no such conversation give the same `forbidden`; nobody hears."""
    (alice, a_token), (bob, _), (_, c_token) = [await person() for _ in range(3)]
    cid = (await group(alice, bob)).pk
    a = await chat(a_token)
    c = await chat(c_token)
    for target in (cid, "k0000000000000000"):
        await c.send_json_to({"type": "typing", "id": "t1", "conversation": target})
        error = await c.receive_json_from(WAIT)
        assert error == {"type": "error", "id": "t1", "code": "forbidden", "message": NOT_A_MEMBER}
    await c.send_json_to({"type": "typing", "id": "t2", "conversation": 5})
    error = await c.receive_json_from(WAIT)
    assert error["code"] == "bad_request" and error["field"] == "conversation"
    await still_open(c)
    assert await a.receive_nothing(QUIET)  # the members heard no `typing` from carol
    await a.disconnect()
    await c.disconnect()
