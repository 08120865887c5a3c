"""The Python SDK's pure parts: webhook signatures, tokens, references, errors, backoff."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import jwt
import pytest
from tether_client import (
    BadRequest,
    ChatClient,
    Forbidden,
    NotAuthenticated,
    RateLimited,
    StreamClient,
    TetherError,
    Topic,
    WebhookVerificationError,
    backoff_delay,
    connection_token,
    error_for,
    external,
    subscription_token,
    user_ref,
    verify_webhook,
)
from tether_client.errors import from_frame

SECRET = "whsec-" + "w" * 40
BODY = json.dumps(
    {"id": "evt_1", "type": "conversation.event", "ts": 1, "data": {"seq": 1}}
).encode()


def signed_headers(body: bytes, ts: int, secret: str = SECRET) -> dict[str, str]:
    # Written from PROTOCOL 13 directly, not with the SDK: the SDK is what is tested.
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Tether-Timestamp": str(ts),
        "Tether-Signature": f"v1={digest}",
        "Tether-Event-Id": "evt_1",
        "Content-Type": "application/json",
    }


def test_a_webhook_signed_per_section_13_verifies_and_decodes() -> None:
    now = int(time.time())
    event = verify_webhook(SECRET, signed_headers(BODY, now), BODY)
    assert event["id"] == "evt_1" and event["data"] == {"seq": 1}
    # Header names in any case (frameworks differ), the body as str too.
    lower = {k.lower(): v for k, v in signed_headers(BODY, now).items()}
    assert verify_webhook(SECRET, lower, BODY.decode())["type"] == "conversation.event"


@pytest.mark.parametrize(
    "case",
    ["tampered body", "wrong secret", "stale", "future", "no signature", "bad scheme", "bad ts"],
)
def test_a_webhook_that_does_not_verify_raises(case: str) -> None:
    now = int(time.time())
    headers = signed_headers(BODY, now)
    body = BODY
    if case == "tampered body":
        body = BODY.replace(b'"seq": 1', b'"seq": 2')
    elif case == "wrong secret":
        headers = signed_headers(BODY, now, secret="another-secret")
    elif case == "stale":
        headers = signed_headers(BODY, now - 301)
    elif case == "future":
        headers = signed_headers(BODY, now + 301)
    elif case == "no signature":
        del headers["Tether-Signature"]
    elif case == "bad scheme":
        headers["Tether-Signature"] = headers["Tether-Signature"].replace("v1=", "v0=")
    elif case == "bad ts":
        headers["Tether-Timestamp"] = "yesterday"
    with pytest.raises(WebhookVerificationError) as raised:
        verify_webhook(SECRET, headers, body)
    assert isinstance(raised.value, TetherError) and raised.value.code == "invalid_signature"


def test_the_tolerance_is_the_callers() -> None:
    old = int(time.time()) - 3600
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, signed_headers(BODY, old), BODY)
    assert verify_webhook(SECRET, signed_headers(BODY, old), BODY, tolerance=3700)["id"] == "evt_1"


def test_tokens_carry_exactly_the_claims_of_section_11() -> None:
    key = "k" * 48
    token = connection_token(key, "u-1", 600, name="Ada", audience="tether", issuer="app")
    claims = jwt.decode(token, key, algorithms=["HS256"], audience="tether", issuer="app")
    assert set(claims) == {"sub", "exp", "iat", "name", "aud", "iss"}
    assert claims["sub"] == "u-1" and claims["name"] == "Ada"
    assert 599 <= claims["exp"] - time.time() <= 601
    sub_token = subscription_token(key, 42, "room:7", 60)
    claims = jwt.decode(sub_token, key, algorithms=["HS256"])
    assert (claims["sub"], claims["topic"]) == ("42", "room:7")
    for bad in (
        lambda: connection_token(key, "", 60),
        lambda: connection_token(key, "x" * 151, 60),
        lambda: connection_token(key, "u", 0),
        lambda: connection_token(key, "u", 60, algorithm="none"),
    ):
        with pytest.raises(ValueError):
            bad()


def test_user_refs() -> None:
    assert user_ref(7) == 7
    assert user_ref("u-1") == external("u-1") == {"external_id": "u-1"}
    assert user_ref({"id": 7, "username": "a", "external_id": "u-1"}) == 7
    assert user_ref({"external_id": "u-2"}) == {"external_id": "u-2"}
    for bad in (True, 1.5, None, {"username": "a"}):
        with pytest.raises(TypeError):
            user_ref(bad)


def test_errors_are_typed_by_code_then_by_status() -> None:
    assert type(error_for("forbidden", status=403)) is Forbidden
    assert type(error_for(None, status=401)) is NotAuthenticated
    limited = from_frame({"type": "error", "code": "rate_limited", "retry_after": 350})
    assert (
        isinstance(limited, RateLimited) and limited.retry_after == 350 and limited.status is None
    )
    unknown = error_for("invalid_credentials", "wrong password", status=401)
    assert isinstance(unknown, NotAuthenticated) and unknown.code == "invalid_credentials"
    odd = error_for("something_new", "x", status=418)
    assert type(odd) is TetherError and odd.code == "something_new"
    assert isinstance(error_for("bad_request", field="body"), BadRequest)


def test_backoff_is_full_jitter_capped_at_30_s() -> None:
    assert backoff_delay(0, lambda: 1.0) == 0.5
    assert backoff_delay(3, lambda: 1.0) == 4.0
    assert backoff_delay(50, lambda: 1.0) == 30.0
    assert backoff_delay(5, lambda: 0.0) == 0.0
    assert backoff_delay(4, lambda: 0.5) == 4.0


def _message(cid: str, seq: int) -> dict:
    return {"type": "message", "conversation": cid, "seq": seq, "body": f"b{seq}", "sender": None}


async def test_chat_holds_a_gap_pages_it_with_history_and_delivers_each_seq_once() -> None:
    # No server: the gap comes from frames handed in directly, history from a stub.
    chat = ChatClient("ws://127.0.0.1:9", positions={"k": 1})
    asked: list[dict] = []
    refilled = asyncio.Event()

    async def history(frame: dict, timeout: float | None = None, on_reply=None) -> dict:
        asked.append(frame)
        refilled.set()
        messages = [_message("k", s) for s in range(frame["after"] + 1, 5)]
        return {
            "data": {
                "messages": [{k: v for k, v in m.items() if k != "type"} for m in messages],
                "has_more": False,
            }
        }

    chat.conn.request = history  # type: ignore[method-assign]
    chat.conn._ready.set()  # as after a welcome
    seen = chat.events("message")
    for seq in (4, 2, 5, 2, 1):  # 3 missing; 2 twice; 1 already held by the app
        await chat.conn.dispatch(_message("k", seq))
    await asyncio.wait_for(refilled.wait(), 5)
    got = [(await seen.next(timeout=5)).data["seq"] for _ in range(4)]
    assert got == [2, 3, 4, 5] and chat.positions == {"k": 5}
    assert asked and asked[0]["after"] == 2 and not seen.pending()


async def test_stream_drops_seen_publications_and_follows_a_new_epoch() -> None:
    stream = StreamClient("ws://127.0.0.1:9")
    stream.topics["prices:X"] = Topic("prices:X", offset=5, epoch="e1", active=True)
    seen = stream.events("pub")
    for offset, epoch in ((5, "e1"), (6, "e1"), (6, "e1"), (1, "e2"), (2, "e2")):
        await stream.conn.dispatch(
            {"type": "pub", "topic": "prices:X", "offset": offset, "epoch": epoch, "data": offset}
        )
    assert [(e.data["offset"], e.data["epoch"]) for e in seen.pending()] == [
        (6, "e1"),
        (1, "e2"),
        (2, "e2"),
    ]
    assert (stream.topics["prices:X"].offset, stream.topics["prices:X"].epoch) == (2, "e2")


async def test_a_subscription_the_server_ends_is_not_resubscribed() -> None:
    stream = StreamClient("ws://127.0.0.1:9")
    stream.topics["ops:stats"] = Topic("ops:stats", offset=3, epoch="e1", active=True)
    stream.topics["prices:X"] = Topic("prices:X", active=True)
    ended = stream.events("unsubscribed")
    frame = {"type": "unsubscribed", "topic": "ops:stats", "reason": "forbidden"}
    await stream.conn.dispatch(frame)
    assert list(stream.topics) == ["prices:X"]
    assert [e.data for e in ended.pending()] == [frame]
    # A reply to our own unsubscribe (it has an id) is not the server's doing.
    await stream.conn.dispatch({"type": "unsubscribed", "id": "r9", "topic": "prices:X"})
    assert list(stream.topics) == ["prices:X"] and not ended.pending()
