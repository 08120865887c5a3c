"""The SDK's server side against live nodes (PROTOCOL 11 and 12): every backend row,
tokens the SDK signs, typed errors."""

from __future__ import annotations

import pytest
from tether_client import (
    AsyncServer,
    BadRequest,
    ChatClient,
    Forbidden,
    NotAuthenticated,
    NotFound,
    RateLimited,
    Server,
    StreamClient,
    TetherError,
    connection_token,
    external,
    subscription_token,
)

from tests.support.live import http
from tests.support.names import unique
from tests.support.sdk import (
    AUDIENCE,
    ISSUER,
    SECRET,
    App,
    mint,
    one_stack,
    service_token,
    start_node,
)
from tests.support.waiting import eventually

WAIT = 10


async def test_put_user_sockets_presence_and_deactivation(app: App) -> None:
    sub, user = app.user()
    again = app.server.put_user(sub, username=unique("renamed"))
    assert again["id"] == user["id"] and again["external_id"] == sub
    chat = ChatClient(app.ws, token=mint(sub))
    events = chat.events("state")
    welcome = (await chat.connect()).welcome
    assert welcome["user"]["id"] == user["id"]
    online = {user["id"]: "online"}
    await eventually(lambda: app.server.presence(external_ids=[sub]) == online, WAIT, "online")
    assert app.server.presence(users=[user["id"]]) == online

    app.server.put_user(sub, is_active=False)  # closes with 4403: no reconnect on its own
    state = await events.next("state", lambda s: s["state"] == "offline", WAIT)
    assert (state.data["reason"], state.data["code"]) == ("forbidden", 4403)
    offline = {user["id"]: "offline"}
    await eventually(lambda: app.server.presence(users=[user["id"]]) == offline, 20, "offline")
    refused = ChatClient(app.ws, token=mint(sub))
    with pytest.raises((NotAuthenticated, Forbidden)):  # refused anew while inactive
        await refused.connect(timeout=WAIT)
    await refused.close()
    await chat.close()


async def test_disconnect_4401_reconnects_only_with_a_token_provider(app: App) -> None:
    sub, _ = app.user()
    minted: list[str] = []

    def provider() -> str:
        minted.append(mint(sub))
        return minted[-1]

    renewing = ChatClient(app.ws, get_token=provider)
    fixed = ChatClient(app.ws, token=mint(sub))
    await renewing.connect()
    await fixed.connect()
    renewing_events, fixed_events = renewing.events(), fixed.events()
    assert app.server.disconnect(sub, code=4401) == 2

    await renewing_events.next("welcome", timeout=WAIT)  # a new token, a new socket
    assert len(minted) == 2 and renewing.conn.generation == 2
    await fixed_events.next("auth_required", timeout=WAIT)
    assert (fixed.state, fixed.conn.close_code) == ("offline", 4401)

    assert app.server.disconnect(sub) == 1  # 4403 by default: stop, whatever the provider
    state = await renewing_events.next("state", lambda s: s["state"] == "offline", WAIT)
    assert state.data["reason"] == "forbidden" and len(minted) == 2
    await renewing.close()
    await fixed.close()


async def test_publish_many_in_order_to_a_stream_client(app: App) -> None:
    sub, _ = app.user()
    topic = f"prices:{unique('P')}"
    async with StreamClient(app.ws, token=mint(sub)) as stream:
        pubs = stream.events("pub")
        reply = await stream.subscribe(topic)
        assert reply is not None and reply["offset"] == 0
        results = app.server.publish([(topic, {"i": i}) for i in range(3)])
        assert [r["offset"] for r in results] == [1, 2, 3]
        assert {r["topic"] for r in results} == {topic}
        got = [(await pubs.next("pub", timeout=WAIT)).data for _ in range(3)]
        assert [(p["offset"], p["data"]) for p in got] == [(i + 1, {"i": i}) for i in range(3)]
        mixed = app.server.publish([{"topic": topic, "data": "x"}, (topic, None)])
        assert [r["offset"] for r in mixed] == [4, 5]


@one_stack
async def test_the_async_server_has_the_same_rows(app: App) -> None:
    async with AsyncServer(app.node.url, app.service) as server:
        sub = unique("async-")
        user = await server.put_user(sub)
        assert user["external_id"] == sub
        assert await server.presence(users=[user["id"]]) == {user["id"]: "offline"}
        topic = f"prices:{unique('A')}"
        assert [r["offset"] for r in await server.publish([(topic, 1), (topic, 2)])] == [1, 2]
        assert await server.disconnect(sub) == 0
        with pytest.raises(NotFound) as raised:
            await server.disconnect(unique("nobody-"))
        assert raised.value.status == 404


@one_stack
def test_typed_errors_carry_the_protocols_codes(app: App) -> None:
    with Server(app.node.url, service_token(app.node, "users")) as users_only:
        with pytest.raises(Forbidden) as raised:
            users_only.publish([("prices:X", 1)])
        assert (raised.value.status, raised.value.code) == (403, "forbidden")
        with pytest.raises(Forbidden):
            users_only.presence(users=[1])
    with Server(app.node.url, "not-a-token") as nobody, pytest.raises(NotAuthenticated) as raised:
        nobody.put_user("x")
    assert raised.value.status == 401
    with pytest.raises(NotFound) as raised:
        app.server.disconnect(unique("nobody-"))
    assert raised.value.code == "not_found"
    with pytest.raises(BadRequest) as raised:
        app.server.publish([("prices:ok", 1), ("nonamespace", 2)])
    assert (raised.value.status, raised.value.field) == (400, "publications[1].topic")
    with pytest.raises(BadRequest) as raised:
        app.server.disconnect(app.user()[0], code=1000)
    assert raised.value.field == "code"
    taken = app.server.put_user(unique("t-"))["username"]
    with pytest.raises(BadRequest) as raised:
        app.server.put_user(unique("t-"), username=taken.upper())
    assert raised.value.field == "username" and isinstance(raised.value, TetherError)


def test_429_is_rate_limited_with_retry_after(embedded_stack, tmp_path) -> None:
    node = start_node(embedded_stack, tmp_path, AUTH_RATE_LIMIT="3/minute")
    try:
        with Server(node.url, "") as anonymous:
            body = {"username": unique("nobody"), "password": "wrong-Passw0rd-long"}
            with pytest.raises(RateLimited) as raised:
                for _ in range(10):
                    with pytest.raises(NotAuthenticated) as refused:
                        anonymous.request("POST", "/api/auth/token/", body)
                    assert refused.value.code == "invalid_credentials"
        assert raised.value.status == 429 and raised.value.code == "rate_limited"
        assert raised.value.retry_after and raised.value.retry_after > 0
    finally:
        node.stop()


@one_stack
async def test_tokens_signed_by_the_sdk_are_what_tether_accepts(app: App) -> None:
    sub = unique("tok-")
    name = unique("Nia")
    token = connection_token(SECRET, sub, 120, name=name, audience=AUDIENCE, issuer=ISSUER)
    status, me, _ = http("GET", app.node.url + "/api/me/", headers=_bearer(token))
    assert status == 200 and (me["external_id"], me["username"]) == (sub, name)
    # The node checks aud and iss: a token without them, or another audience, is refused.
    for bad in (
        connection_token(SECRET, sub, 120),
        connection_token(SECRET, sub, 120, audience="other", issuer=ISSUER),
        connection_token("x" * 48, sub, 120, audience=AUDIENCE, issuer=ISSUER),
    ):
        status, body, _ = http("GET", app.node.url + "/api/me/", headers=_bearer(bad))
        assert (status, body["error"]) == (401, "not_authenticated")

    topic = f"room:{unique('r')}"
    async with StreamClient(app.ws, token=token) as stream:
        failures = stream.events("subscribe_failed")
        with pytest.raises(Forbidden):
            await stream.subscribe(topic)  # a `token` namespace: refused without one
        assert (await failures.next(timeout=WAIT)).data["code"] == "forbidden"
        assert topic not in stream.topics
        room_token = subscription_token(SECRET, sub, topic, 60, audience=AUDIENCE, issuer=ISSUER)
        reply = await stream.subscribe(topic, token=room_token)
        assert reply is not None and reply["topic"] == topic

    # A client-wide provider, asked per topic (and again after every reconnect).
    asked: list[str] = []

    async def room_tokens(name: str) -> str | None:
        asked.append(name)
        if not name.startswith("room:"):
            return None
        return subscription_token(SECRET, sub, name, 60, audience=AUDIENCE, issuer=ISSUER)

    async with StreamClient(app.ws, token=token, get_subscription_token=room_tokens) as stream:
        assert await stream.subscribe(topic) is not None
        assert await stream.subscribe("prices:open") is not None
        subscribed = stream.events("subscribed")
        stream.conn.drop()
        again = {(await subscribed.next(timeout=WAIT)).data["topic"] for _ in range(2)}
        assert again == {topic, "prices:open"}
        assert sorted(asked) == sorted([topic, "prices:open"] * 2)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the chat rows -------------------------------------------------------------------


async def test_conversations_members_and_messages_from_the_backend(app: App) -> None:
    (ann, ann_user), (ben, ben_user), (cy, cy_user) = app.user(), app.user(), app.user()
    group = app.server.create_conversation("group", [external(ann), ben_user["id"]], title="ops")
    assert group["kind"] == "group" and group["created_by"] is None
    assert {m["id"] for m in group["members"]} == {ann_user["id"], ben_user["id"]}

    async with (
        ChatClient(app.ws, token=mint(ann)) as ann_chat,
        ChatClient(app.ws, token=mint(cy)) as cy_chat,
    ):
        ann_events, cy_events = ann_chat.events("message"), cy_chat.events("joined", "left")
        stored = app.server.post_message(group["id"], "k-1", "hello from ann", sender=ann)
        assert stored["seq"] == 1 and stored["sender"]["id"] == ann_user["id"]
        again = app.server.post_message(group["id"], "k-1", "hello from ann", sender=ann)
        assert again["duplicate"] is True and again["message_id"] == stored["message_id"]
        system = app.server.post_message(group["id"], "k-2", "maintenance at noon", sender=None)
        assert system["sender"] is None and system["seq"] == 2
        got = [(await ann_events.next(timeout=WAIT)).data for _ in range(2)]
        assert [(m["seq"], m["body"]) for m in got] == [
            (1, "hello from ann"),
            (2, "maintenance at noon"),
        ]
        assert got[1]["sender"] is None

        app.server.add_member(group["id"], external(cy))
        joined = await cy_events.next("joined", timeout=WAIT)
        assert joined.data["id"] == group["id"]
        app.server.remove_member(group["id"], cy_user)
        left = await cy_events.next("left", timeout=WAIT)
        assert left.data["conversation"] == group["id"]

    direct = app.server.create_conversation("direct", [ann, ben])
    assert direct["kind"] == "direct"
    with pytest.raises(BadRequest):
        app.server.create_conversation("direct", [ann, ben, cy])
    with Server(app.node.url, service_token(app.node, "users", "publish")) as no_chat:
        with pytest.raises(Forbidden):
            no_chat.create_conversation("group", [ann], title="x")
        with pytest.raises(Forbidden):
            no_chat.post_message(group["id"], "k-3", "x")
