"""PROTOCOL 11 over real sockets and HTTP: the application's users in with signed tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.live import DaphneNode, http, manage
from tests.support.names import unique
from tests.support.wsclient import ConnectionClosedByServer, WsClient

SECRET = "k" * 48
EC_KEY = ec.generate_private_key(ec.SECP256R1())
APP_ORIGIN = "https://app.example.com"


def _one_line_pem() -> str:
    pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode().replace("\n", "\\n")


def signed(sub: str, seconds: float = 300, alg: str = "HS256", **extra: Any) -> str:
    payload = {"sub": sub, "exp": int(time.time() + seconds), **extra}
    return jwt.encode(payload, SECRET if alg == "HS256" else EC_KEY, alg)


@pytest.fixture(scope="module", params=["embedded", "production"])
def app_node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaphneNode]:
    """One node for the module in each mode: every test uses users of its own."""
    stack = request.getfixturevalue(f"{request.param}_stack")
    node = DaphneNode(
        stack=stack,
        name=unique("jwt-"),
        log_dir=tmp_path_factory.mktemp("jwt"),
        settings={
            "JWT_SECRET": SECRET,
            "JWT_PUBLIC_KEY": _one_line_pem(),
            "ALLOWED_ORIGINS": APP_ORIGIN,
        },
    ).start()
    yield node
    node.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def options(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """A CORS preflight: its status and response headers, names lower-cased."""
    status, _, found = http("OPTIONS", url, headers=headers)
    return status, {k.lower(): v for k, v in found.items()}


async def test_a_signed_token_opens_both_endpoints_and_acts_on_rest(app_node) -> None:
    sub = unique("app-")
    name = unique("Ann")
    token = signed(sub, name=name)
    chat = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=token)
    welcome = await chat.welcome()
    user = welcome["user"]
    assert user["external_id"] == sub and user["username"] == name
    assert (
        welcome["expires_at"]
        == jwt.decode(token, options={"verify_signature": False})["exp"] * 1000
    )
    stream = await WsClient.open(f"{app_node.ws_url}/ws/stream/", token=signed(sub, alg="ES256"))
    assert (await stream.welcome())["user"] == user  # the same user, whichever key signed
    status, me, _ = http("GET", f"{app_node.url}/api/me/", headers=bearer(token))
    assert status == 200 and me == user
    await chat.close()
    await stream.close()


async def test_a_refused_token_closes_4401_and_answers_401(app_node) -> None:
    expired = signed(unique("app-"), seconds=-60)
    unsigned = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, "none")
    for bad in (expired, unsigned, signed("x") + "tampered"):
        client = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=bad)
        assert await client.close_code() == 4401
        status, body, _ = http("GET", f"{app_node.url}/api/me/", headers=bearer(bad))
        assert (status, body["error"]) == (401, "not_authenticated")


async def test_the_socket_closes_4401_at_expiry_unless_refreshed(app_node) -> None:
    sub = unique("app-")
    short = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=signed(sub, seconds=2))
    kept = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=signed(sub, seconds=2))
    await short.welcome()
    await kept.welcome()
    later = signed(sub, seconds=120)
    await kept.send({"type": "refresh", "id": "r1", "token": later})
    result = await kept.expect("result")
    assert result["id"] == "r1"
    assert (
        result["data"]["expires_at"]
        == jwt.decode(later, options={"verify_signature": False})["exp"] * 1000
    )
    # Another user's token, or none that verifies: refused, nothing changed.
    await kept.send({"type": "refresh", "id": "r2", "token": signed(unique("app-"))})
    assert (await kept.expect("error"))["code"] == "forbidden"
    await kept.send({"type": "refresh", "id": "r3", "token": "not.a.jwt"})
    assert (await kept.expect("error"))["code"] == "bad_request"
    assert await short.close_code(timeout=10) == 4401
    await kept.send({"type": "ping", "id": "p"})
    assert (await kept.expect("pong"))["id"] == "p"  # still open past the first expiry
    await kept.close()


async def test_a_refresh_on_a_socket_without_a_connection_token_is_refused(app_node) -> None:
    client = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=app_node.register(unique()))
    welcome = await client.welcome()
    # A token from POST /api/auth/token/ lasts API_TOKEN_TTL (30 days by default).
    days = (welcome["expires_at"] - welcome["server_time"]) / 86_400_000
    assert 29.9 < days <= 30 and "external_id" not in welcome["user"]
    await client.send({"type": "refresh", "id": "r", "token": signed(unique("app-"))})
    error = await client.expect("error")
    assert (error["id"], error["code"]) == ("r", "bad_request")
    await client.close()


async def test_a_page_on_the_apps_origin_trades_its_token_for_a_ticket(app_node) -> None:
    preflight = {
        "Origin": APP_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    status, headers = options(f"{app_node.url}/api/auth/ws-ticket/", preflight)
    assert status == 200 and headers.get("access-control-allow-origin") == APP_ORIGIN
    assert "authorization" in headers.get("access-control-allow-headers", "").lower()
    foreign = {**preflight, "Origin": "https://evil.example.com"}
    _, headers = options(f"{app_node.url}/api/auth/ws-ticket/", foreign)
    assert "access-control-allow-origin" not in headers
    _, headers = options(f"{app_node.url}/api/me/", preflight)
    assert "access-control-allow-origin" not in headers  # that path only

    sub = unique("app-")
    token = signed(sub, seconds=60)
    status, body, headers = http(
        "POST",
        f"{app_node.url}/api/auth/ws-ticket/",
        headers={**bearer(token), "Origin": APP_ORIGIN},
    )
    assert status == 201
    assert {k.lower(): v for k, v in headers.items()}["access-control-allow-origin"] == APP_ORIGIN
    client = await WsClient.open(f"{app_node.ws_url}/ws/chat/?ticket={body['ticket']}")
    welcome = await client.welcome()
    assert welcome["user"]["external_id"] == sub
    assert (
        welcome["expires_at"]
        == jwt.decode(token, options={"verify_signature": False})["exp"] * 1000
    )
    await client.send({"type": "refresh", "id": "r", "token": signed(sub, seconds=120)})
    assert (await client.expect("result"))["data"]["expires_at"] > welcome["expires_at"]
    await client.close()


async def test_without_keys_a_jwt_is_no_credential(node) -> None:
    client = await WsClient.open(f"{node.ws_url}/ws/chat/", token=signed(unique("app-")))
    with pytest.raises(ConnectionClosedByServer) as closed:
        await client.welcome()
    assert closed.value.code == 4401


async def test_the_backend_closes_and_disables_its_users_sockets(app_node) -> None:
    name = unique("svc")
    app_node.register(name)
    service = manage(
        app_node.stack.env(), "issue_token", name, "--scope", "users,connections"
    ).stdout.strip()
    sub = unique("app-")
    client = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=signed(sub))
    await client.welcome()
    status, body, _ = http(
        "POST",
        f"{app_node.url}/api/server/users/{sub}/disconnect/",
        {"code": 4401},
        bearer(service),
    )
    assert (status, body) == (200, {"closed": 1})
    assert await client.close_code() == 4401
    again = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=signed(sub))
    await again.welcome()
    status, body, _ = http(
        "PUT", f"{app_node.url}/api/server/users/{sub}/", {"is_active": False}, bearer(service)
    )
    assert status == 200 and body["external_id"] == sub
    assert await again.close_code() == 4403  # disabled: closed on every node
    refused = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=signed(sub))
    assert await refused.close_code() == 4403  # and new sockets refused


async def test_a_connection_token_cannot_extend_an_api_token_socket(app_node) -> None:
    sub = unique("app-")
    first = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=signed(sub))
    username = (await first.welcome())["user"]["username"]
    await first.close()
    raw = manage(app_node.stack.env(), "issue_token", username, "--expires-in", "1h").stdout.strip()
    client = await WsClient.open(f"{app_node.ws_url}/ws/chat/", token=raw)
    welcome = await client.welcome()
    await client.send({"type": "refresh", "id": "r", "token": signed(sub, seconds=86_400)})
    error = await client.expect("error")
    assert (error["id"], error["code"]) == ("r", "bad_request")  # the token's hour stands
    assert welcome["expires_at"] - welcome["server_time"] <= 3_600_000
    await client.close()
