"""Web Push (PROTOCOL 14) from live daphne nodes to a fake push service on 127.0.0.1
that decrypts each push (RFC 8291) and verifies its VAPID header (RFC 8292): one push
per message per subscription of each member with no open chat socket, none for a
member online, 404/410 removing a subscription, 5xx and 429 retried (after
`Retry-After`), a node killed before sending."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.chat import Person, group, person, send
from tests.support.live import DaphneNode, Stack, http, processes_on
from tests.support.names import unique
from tests.support.pushservice import PushService, Subscription
from tests.support.waiting import eventually

SUBJECT = "mailto:ops@example.com"


@pytest.fixture
def service() -> Iterator[PushService]:
    s = PushService().start()
    yield s
    s.stop()


def pushing(**more: str) -> dict[str, str]:
    return {"PUSH_ENDPOINT_ALLOWLIST": "http://127.0.0.1:", "VAPID_SUBJECT": SUBJECT, **more}


def subscribe(node: DaphneNode, who: Person, service: PushService) -> tuple[str, Subscription]:
    token, sub = service.subscription()
    status, body = who.api(node, "POST", "/api/push/subscriptions/", sub.to_json())
    assert status == 201, body
    return token, sub


async def wait(
    service: PushService, check: Callable[[PushService], Any], timeout: float, what: str
):
    return await asyncio.to_thread(service.wait_for, check, timeout, what)


def subscriptions_of(stack: Stack, user_id: int) -> int:
    return stack.sql("SELECT count(*) FROM realtime_pushsubscription WHERE user_id = %s", user_id)[
        0
    ][0]


async def test_one_push_per_message_per_subscription_of_members_away(
    stack: Stack, make_node: Callable[..., DaphneNode], service: PushService
) -> None:
    node = make_node(stack, **pushing())
    alice, bob, carol = person(node), person(node), person(node)
    status, key = alice.api(node, "GET", "/api/push/key/")
    assert status == 200 and len(key["public_key"]) == 87, key
    bob_phone, _ = subscribe(node, bob, service)
    bob_laptop, laptop = subscribe(node, bob, service)
    carol_sub, _ = subscribe(node, carol, service)
    # Registering again answers 200 and adds nothing.
    status, _ = bob.api(node, "POST", "/api/push/subscriptions/", laptop.to_json())
    assert status == 200 and subscriptions_of(stack, bob.id) == 2
    c = await carol.socket(node)  # carol is online: no push for her
    a = await alice.socket(node)
    cid = group(node, alice, bob, carol, title="crew")
    long_body = "x" * 150
    ack = await send(a, cid, "hello bob")
    status, rest = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": unique("r"), "body": long_body}
    )
    assert status == 201, rest

    await wait(
        service,
        lambda s: len(s.of(bob_phone)) >= 2 and len(s.of(bob_laptop)) >= 2,
        10,
        "two pushes on each of bob's subscriptions",
    )
    await asyncio.sleep(1.5)  # nothing more arrives: one push per message per subscription
    for token in (bob_phone, bob_laptop):
        pushes = service.of(token, delivered_only=False)
        assert [p.payload["seq"] for p in pushes if p.payload] == [1, 2]
        assert len(pushes) == 2
        first, second = pushes
        assert first.payload == {
            "type": "message",
            "conversation": cid,
            "seq": 1,
            "message_id": ack["message_id"],
            "sender": {"id": alice.id, "username": alice.username},
            "body": "hello bob",
        }
        assert second.payload["body"] == "x" * 100
        assert second.payload["message_id"] == rest["message_id"]
        for p in pushes:
            assert p.claims is not None, p.headers.get("Authorization")
            assert p.claims["sub"] == SUBJECT and p.claims["aud"] == service.origin
            assert p.vapid_key == key["public_key"]
            assert int(p.headers["TTL"]) > 0
            assert p.headers["Content-Encoding"] == "aes128gcm"
    assert service.of(carol_sub, delivered_only=False) == []
    await eventually(
        lambda: (
            stack.sql(
                "SELECT state, count(*) FROM realtime_outboxevent WHERE type = 'push.message' "
                "AND order_key IN (%s, %s) GROUP BY state",
                *[
                    f"push:{i}"
                    for (i,) in stack.sql(
                        "SELECT id FROM realtime_pushsubscription WHERE user_id = %s ORDER BY id",
                        bob.id,
                    )
                ],
            )
            == [("delivered", 4)]
        ),
        5,
        "every push row marked delivered",
    )
    await a.close()
    await c.close()


async def test_subscription_rules_over_rest(
    embedded_stack: Stack, make_node: Callable[..., DaphneNode], service: PushService
) -> None:
    node = make_node(embedded_stack, **pushing())
    alice, bob = person(node), person(node)
    _, sub = service.subscription()
    body = sub.to_json()
    for endpoint in (
        "http://example.com/push/1",
        "https://10.1.2.3/push",
        "https://[::1]/push",
        "https://169.254.169.254/latest",
        "https://localhost/push",
        "not a url",
    ):
        status, error = alice.api(
            node, "POST", "/api/push/subscriptions/", {**body, "endpoint": endpoint}
        )
        assert status == 400 and error["error"] == "bad_request", (endpoint, error)
        assert error["field"] == "endpoint", error
    status, error = alice.api(
        node, "POST", "/api/push/subscriptions/", {**body, "keys": {"p256dh": "AAAA", "auth": "x"}}
    )
    assert status == 400 and error["field"] == "keys", error
    status, _ = alice.api(node, "POST", "/api/push/subscriptions/", body)
    assert status == 201
    # Only its owner removes it.
    status, _ = bob.api(node, "DELETE", "/api/push/subscriptions/", {"endpoint": sub.endpoint})
    assert status == 204 and subscriptions_of(embedded_stack, alice.id) == 1
    status, _ = alice.api(node, "DELETE", "/api/push/subscriptions/", {"endpoint": sub.endpoint})
    assert status == 204 and subscriptions_of(embedded_stack, alice.id) == 0
    status, _, _ = http("GET", node.url + "/api/push/key/")
    assert status == 401


async def test_gone_removed_errors_retried_retry_after_honoured(
    embedded_stack: Stack, make_node: Callable[..., DaphneNode], service: PushService
) -> None:
    node = make_node(embedded_stack, **pushing())
    alice, bob = person(node), person(node)
    gone, _ = subscribe(node, bob, service)
    flaky, _ = subscribe(node, bob, service)
    busy, _ = subscribe(node, bob, service)
    service.answers[gone] = [(410, None)]
    service.answers[flaky] = [(500, None)]
    service.answers[busy] = [(429, "3")]
    cid = group(node, alice, bob)
    status, _ = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": unique("r"), "body": "one"}
    )
    assert status == 201
    await wait(service, lambda s: s.of(flaky) and s.of(busy), 20, "the retried pushes delivered")
    flaky_tries = service.of(flaky, delivered_only=False)
    assert [p.answered for p in flaky_tries] == [500, 201]
    busy_tries = service.of(busy, delivered_only=False)
    assert [p.answered for p in busy_tries] == [429, 201]
    assert busy_tries[1].at - busy_tries[0].at >= 2.9, "Retry-After: 3 was honoured"
    assert busy_tries[1].payload == busy_tries[0].payload
    assert [p.answered for p in service.of(gone, delivered_only=False)] == [410]
    await eventually(
        lambda: subscriptions_of(embedded_stack, bob.id) == 2, 5, "the 410 subscription removed"
    )
    # The next message goes to the two left only.
    status, _ = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": unique("r"), "body": "two"}
    )
    await wait(service, lambda s: len(s.of(flaky)) == 2 and len(s.of(busy)) == 2, 10, "two")
    assert len(service.of(gone, delivered_only=False)) == 1


# Alone: in three two-worker runs (`make test`) it failed where it passes by itself;
# two later full runs with it in the two-worker set passed (docs/architecture.md,
# "Tests run alone"). If it fails, its message names what held the push.
@pytest.mark.alone
async def test_pushes_survive_a_node_killed_before_sending(
    stack: Stack, make_node: Callable[..., DaphneNode], service: PushService
) -> None:
    # A short request timeout, so the killed node's lease (two requests' time and 5 s)
    # runs out soon.
    node = make_node(stack, **pushing(WEBHOOK_TIMEOUT="2"))
    alice, bob = person(node), person(node)
    token, _ = subscribe(node, bob, service)
    cid = group(node, alice, bob)
    service.stop()  # the push service is away: the push waits in the outbox
    status, _ = alice.api(
        node, "POST", f"/api/conversations/{cid}/messages/", {"id": unique("r"), "body": "hey"}
    )
    assert status == 201
    node.stop(signal.SIGKILL)
    service.start()
    make_node(stack, **pushing(WEBHOOK_TIMEOUT="2"))
    # The lease (9 s), then a retry's delay, after a new node's start: generous, as
    # a loaded machine (two test workers) starts nodes slowly.
    try:
        await wait(service, lambda s: s.of(token), 60, "the push after the restart")
    except AssertionError:
        # What held the push: its row, the nodes on record, any process on the stack.
        rows = stack.sql(
            "SELECT type, state, attempts, next_attempt_at, last_status, last_error"
            " FROM realtime_outboxevent ORDER BY id"
        )
        nodes = stack.sql("SELECT name, last_heartbeat FROM realtime_node")
        raise AssertionError(
            f"outbox: {rows}\nnodes: {nodes}\nprocesses: {processes_on(stack)}\n"
            f"pushes seen: {service.of(token, delivered_only=False)}"
        ) from None
    await asyncio.sleep(1)
    assert [p.payload["body"] for p in service.of(token)] == ["hey"]


async def test_pushes_and_webhooks_together(
    embedded_stack: Stack, make_node: Callable[..., DaphneNode], service: PushService
) -> None:
    from tests.support.receiver import SECRET, Receiver

    receiver = Receiver().start()
    try:
        node = make_node(embedded_stack, **pushing(WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET))
        alice, bob = person(node), person(node)
        token, _ = subscribe(node, bob, service)
        cid = group(node, alice, bob)
        status, sent = alice.api(
            node, "POST", f"/api/conversations/{cid}/messages/", {"id": unique("r"), "body": "b"}
        )
        assert status == 201
        await wait(service, lambda s: s.of(token), 10, "the push")
        notified = await asyncio.to_thread(
            receiver.wait_for, lambda r: r.events("notify.offline"), 10, "notify.offline"
        )
        assert notified[0]["data"]["message_id"] == sent["message_id"]
        assert service.of(token)[0].payload["message_id"] == sent["message_id"]
        # The receiver never sees a push row.
        await asyncio.sleep(1)
        assert {e["type"] for e in receiver.events()} <= {
            "member.joined",
            "conversation.event",
            "notify.offline",
            "presence.online",
            "presence.offline",
        }
    finally:
        receiver.stop()
