"""Web Push's rules without a server (PROTOCOL 14): which endpoints the server posts to,
the VAPID key (generated once, kept, accepted as PEM or raw), the VAPID header, the
push service's answers, and subscriptions stored per user and endpoint."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from project import config
from realtime.hooks import pushes
from realtime.protocol import TetherError
from realtime.push import endpoints, subscriptions, vapid, webpush
from tests.support.pushservice import PushService, verify_vapid

PUBLIC = "142.250.1.1"  # a global address (no DNS needed: resolvers are faked)


def resolver(table: dict[str, list[str]]):
    return lambda host: table.get(host, [])


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://push.example.com/x",  # not https
        "ftp://push.example.com/x",
        "https://127.0.0.1/x",
        "https://10.0.0.8/x",
        "https://172.16.5.4/x",
        "https://192.168.1.1/x",
        "https://100.64.0.1/x",  # shared address space
        "https://169.254.169.254/latest/meta-data",  # link-local: cloud metadata
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[fd00::1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://0.0.0.0/x",
        "https://224.0.0.1/x",
        "https://localhost/x",
        "https://printer.local/x",
        "https://user:pw@push.example.com/x",
        "https://inside.example.com/x",  # resolves to a private address
        "https://split.example.com/x",  # one public and one private address
        "https://nowhere.example.com/x",  # does not resolve
        "",
        "push.example.com/x",
        None,
        "https://" + "a" * 1000 + ".com/",
    ],
)
def test_endpoints_refused(endpoint: object, settings) -> None:
    settings.PUSH_ENDPOINT_ALLOWLIST = []
    table = {
        "push.example.com": [PUBLIC],
        "inside.example.com": ["10.1.1.1"],
        "split.example.com": [PUBLIC, "127.0.0.1"],
    }
    assert endpoints.problem(endpoint, resolver(table)) is not None


def test_endpoints_allowed_and_the_allowlist(settings) -> None:
    settings.PUSH_ENDPOINT_ALLOWLIST = []
    table = {"fcm.googleapis.com": [PUBLIC, "2607:f8b0:4004:c1b::5f"]}
    assert endpoints.problem("https://fcm.googleapis.com/fcm/send/abc", resolver(table)) is None
    assert endpoints.problem(f"https://{PUBLIC}:8443/p", resolver({})) is None
    assert endpoints.problem("http://127.0.0.1:9000/push/a", resolver({})) is not None
    settings.PUSH_ENDPOINT_ALLOWLIST = ["http://127.0.0.1:"]
    assert endpoints.problem("http://127.0.0.1:9000/push/a", resolver({})) is None
    # A prefix is a prefix: another host that starts alike is not allowed, nor a URL that
    # starts with the prefix and names another host after credentials.
    assert endpoints.problem("http://127.0.0.2:9000/push/a", resolver({})) is not None
    assert endpoints.problem("http://127.0.0.1:80@10.0.0.1/push", resolver({})) is not None


def test_vapid_key_generated_once_and_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(config, "VAR_DIR", tmp_path / "var")
    first = config.load({"SECRET_KEY": "k" * 50})
    second = config.load({"SECRET_KEY": "k" * 50})
    path = tmp_path / "var" / "vapid_private_key.pem"
    assert first["VAPID_PRIVATE_KEY"] == second["VAPID_PRIVATE_KEY"] == path.read_text()
    assert first.sources["VAPID_PRIVATE_KEY"] == "default"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["vapid_private_key.pem"]
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_vapid_key_as_pem_or_raw_and_refused_otherwise() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = base64.urlsafe_b64encode(key.private_numbers().private_value.to_bytes(32, "big"))
    pem = config._pem(key)
    from_raw = config.load({"VAPID_PRIVATE_KEY": raw.decode().rstrip("=")})["VAPID_PRIVATE_KEY"]
    from_pem = config.load({"VAPID_PRIVATE_KEY": pem.replace("\n", "\\n")})["VAPID_PRIVATE_KEY"]
    assert from_raw == from_pem == pem
    for bad in ("not a key", "AAAA", config._pem(ec.generate_private_key(ec.SECP384R1()))):
        with pytest.raises(config.ConfigError, match="VAPID_PRIVATE_KEY"):
            config.load({"VAPID_PRIVATE_KEY": bad})
    for bad in ("ops@example.com", "http://example.com", "mailto:"):
        with pytest.raises(config.ConfigError, match="VAPID_SUBJECT"):
            config.load({"VAPID_SUBJECT": bad})


def test_vapid_header_verifies_for_the_endpoints_origin(settings) -> None:
    settings.VAPID_SUBJECT = "mailto:ops@example.com"
    header = vapid.authorization("https://push.example.com:8443/send/abc?x=1")
    claims, key = verify_vapid(header, "https://push.example.com:8443")
    assert claims is not None and claims["sub"] == "mailto:ops@example.com"
    assert key == vapid.public_key()
    assert time.time() + 11 * 3600 < claims["exp"] <= time.time() + 24 * 3600
    assert verify_vapid(header, "https://other.example.com")[0] is None


def test_a_push_decrypts_with_the_subscriptions_keys() -> None:
    import http_ece

    service = PushService()
    _, sub = service.subscription()
    keys = sub.to_json()["keys"]
    request = webpush.build(sub.endpoint, keys["p256dh"], keys["auth"], b'{"a":1}')
    assert request.headers["Content-Encoding"] == "aes128gcm"
    plain = http_ece.decrypt(request.body, private_key=sub.private_key, auth_secret=sub.auth)
    assert plain == b'{"a":1}'
    assert webpush.valid_keys(keys["p256dh"], keys["auth"])
    assert not webpush.valid_keys(keys["p256dh"], "AAAA")
    assert not webpush.valid_keys("AAAA", keys["auth"])


def test_push_service_answers() -> None:
    assert pushes.verdict(201, None) == pushes.Verdict(True, False, False, 0.0)
    assert pushes.verdict(410, None).gone and pushes.verdict(404, None).gone
    assert pushes.verdict(429, "7") == pushes.Verdict(False, False, True, 7.0)
    assert pushes.verdict(503, None).retry
    for status in (400, 401, 403, 413):
        answer = pushes.verdict(status, None)
        assert not answer.retry and not answer.gone and not answer.delivered
    now = 1_800_000_000
    assert pushes.retry_after("Fri, 15 Jan 2027 08:00:30 GMT", now=now) > 0
    assert pushes.retry_after("soon", now=now) == 0.0


@pytest.mark.django_db(transaction=True)
def test_subscriptions_per_user_and_endpoint(settings, django_user_model) -> None:
    settings.PUSH_ENDPOINT_ALLOWLIST = ["http://127.0.0.1:"]
    alice = django_user_model.objects.create_user("push-alice", password="x")
    bob = django_user_model.objects.create_user("push-bob", password="x")
    service = PushService()
    _, sub = service.subscription()
    assert subscriptions.subscribe(alice, sub.to_json()) is True
    assert subscriptions.subscribe(alice, sub.to_json()) is False
    assert subscriptions.subscribe(bob, sub.to_json()) is True  # the same browser, another user
    with pytest.raises(TetherError) as refused:
        subscriptions.subscribe(alice, {**sub.to_json(), "endpoint": "https://10.0.0.1/x"})
    assert refused.value.extra["field"] == "endpoint"
    subscriptions.unsubscribe(bob, sub.endpoint)
    assert alice.push_subscriptions.count() == 1 and bob.push_subscriptions.count() == 0
    # The newest MAX_PER_USER are kept.
    for _ in range(subscriptions.MAX_PER_USER + 2):
        subscriptions.subscribe(alice, service.subscription()[1].to_json())
    assert alice.push_subscriptions.count() == subscriptions.MAX_PER_USER
    assert not alice.push_subscriptions.filter(endpoint=sub.endpoint).exists()


def test_push_payload_of_a_message_and_of_a_system_message(django_user_model) -> None:
    from realtime.hooks import outbox
    from realtime.models import Message

    alice = django_user_model(id=7, username="alice")
    said = Message(id="m_1", conversation_id="k1", seq=3, sender=alice, body="é" * 150, ts=1)
    assert outbox.push_payload(said) == {
        "type": "message",
        "conversation": "k1",
        "seq": 3,
        "message_id": "m_1",
        "sender": {"id": 7, "username": "alice"},
        "body": "é" * 100,
    }
    system = Message(id="m_2", conversation_id="k1", seq=4, sender=None, body="notice", ts=1)
    assert outbox.push_payload(system)["sender"] is None
    # One row per subscription of each member but the sender, keyed by subscription.
    rows = outbox.pushes(said, {"k1": [(7, 1), (8, 2), (9, 3)]})
    assert [(r.type, r.order_key) for r in rows] == [
        ("push.message", "push:2"),
        ("push.message", "push:3"),
    ]


@pytest.mark.django_db(transaction=True)
def test_push_rows_for_members_away_but_not_the_sender_online_or_disabled(settings) -> None:
    import json

    from realtime.chat import sends
    from realtime.models import OutboxEvent, PushSubscription
    from tests.hooks.test_outbox import conversation, online, users

    settings.WEBHOOK_URL = ""  # pushes do not need webhooks
    alice, bob, carol, dave = users(4)
    cid = conversation(alice, bob, carol, dave)
    subs = {}
    for who in (alice, bob, carol, dave):
        keys = PushService().subscription()[1].to_json()["keys"]
        subs[who.pk] = PushSubscription.objects.create(
            user=who, endpoint=f"https://push.example.com/{who.pk}", **keys
        ).pk
    online(carol)
    dave.is_active = False
    dave.save()

    def pushed() -> list[tuple[str, int, dict]]:
        out = []
        for e in OutboxEvent.objects.filter(type="push.message").order_by("id"):
            data = json.loads(e.data)
            out.append((e.order_key, data["subscription"], data["payload"]))
        return out

    sent = sends.send(alice, cid, "k1", "hi")
    (key, sid, payload), *more = pushed()
    assert more == [] and key == f"push:{subs[bob.pk]}" and sid == subs[bob.pk]
    assert payload["message_id"] == sent.message.id and payload["seq"] == sent.message.seq
    assert OutboxEvent.objects.exclude(type="push.message").count() == 0
    # A duplicate send is no news.
    sends.send(alice, cid, "k1", "hi")
    assert len(pushed()) == 1
