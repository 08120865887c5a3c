"""Connection tokens (PROTOCOL 11): every refusal of the section, and users by `sub`."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from accounts import connection_tokens
from accounts.models import User
from project.config import ConfigError, load
from realtime.transport.signed import Refused, verify

SECRET = "s" * 48
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "app-42", "exp": int(time.time()) + 300, **extra}


@pytest.fixture
def keys(settings) -> None:
    settings.JWT_SECRET = SECRET
    settings.JWT_PUBLIC_KEY = public_pem(EC_KEY)
    settings.JWT_AUDIENCE = ""
    settings.JWT_ISSUER = ""


def test_each_configured_algorithm_verifies(keys, settings) -> None:
    assert verify(jwt.encode(claims(name="Ann"), SECRET, "HS256")).name == "Ann"
    assert verify(jwt.encode(claims(), EC_KEY, "ES256")).sub == "app-42"
    settings.JWT_PUBLIC_KEY = public_pem(RSA_KEY)
    found = verify(jwt.encode(claims(), RSA_KEY, "RS256"))
    assert found.sub == "app-42" and found.expires_at_ms == found.exp * 1000


def _unsigned(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, None, algorithm="none")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _unsigned(claims()), id="alg-none"),
        pytest.param(lambda: jwt.encode(claims(), SECRET, "HS384"), id="other-algorithm"),
        pytest.param(lambda: jwt.encode(claims(), RSA_KEY, "RS256"), id="rsa-not-configured"),
        pytest.param(lambda: jwt.encode(claims(), "x" * 40, "HS256"), id="bad-signature"),
        pytest.param(lambda: jwt.encode(claims(exp=int(time.time()) - 60), SECRET), id="expired"),
        pytest.param(lambda: jwt.encode({"exp": int(time.time()) + 60}, SECRET), id="no-sub"),
        pytest.param(lambda: jwt.encode({"sub": "app-42"}, SECRET), id="no-exp"),
        pytest.param(lambda: jwt.encode(claims(sub=""), SECRET), id="empty-sub"),
        pytest.param(lambda: jwt.encode(claims(sub="x" * 151), SECRET), id="long-sub"),
        pytest.param(lambda: jwt.encode(claims(sub=42), SECRET), id="number-sub"),
        pytest.param(lambda: "a.b.c", id="garbage"),
        pytest.param(
            # Key confusion: the public key used as an HMAC secret.
            lambda: _hs256_with(public_pem(EC_KEY).encode()),
            id="public-key-as-hmac-secret",
        ),
    ],
)
def test_refused(keys, make: Any) -> None:
    with pytest.raises(Refused):
        verify(make())


def _hs256_with(key: bytes) -> str:
    """HS256 signed by hand with `key` (PyJWT refuses to use a PEM as an HMAC key)."""
    import base64
    import hashlib
    import hmac
    import json

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims()).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


def test_audience_and_issuer_are_checked_when_set(keys, settings) -> None:
    settings.JWT_AUDIENCE = "tether"
    settings.JWT_ISSUER = "https://app.example.com"
    good = claims(aud="tether", iss="https://app.example.com")
    assert verify(jwt.encode(good, SECRET)).sub == "app-42"
    for bad in (
        claims(iss="https://app.example.com"),
        {**good, "aud": "other"},
        claims(aud="tether"),
    ):
        with pytest.raises(Refused):
            verify(jwt.encode(bad, SECRET))


def test_nothing_is_a_connection_token_without_a_key(settings) -> None:
    settings.JWT_SECRET = ""
    settings.JWT_PUBLIC_KEY = ""
    with pytest.raises(Refused):
        verify(jwt.encode(claims(), SECRET))


def _sub_name(found: Any) -> tuple[str, str | None]:
    return found.sub, found.name


@pytest.mark.django_db
def test_users_are_found_by_sub_and_created_at_first_sight(keys) -> None:
    User.objects.create_user("taken")
    first = connection_tokens.user_for(*_sub_name(verify(jwt.encode(claims(name="Ann"), SECRET))))
    assert (first.username, first.external_id, first.has_usable_password()) == (
        "Ann",
        "app-42",
        False,
    )
    again = connection_tokens.user_for(*_sub_name(verify(jwt.encode(claims(name="Other"), SECRET))))
    assert again.pk == first.pk and again.username == "Ann"
    # A name in use (any case), or not a valid user name: a name derived from `sub`.
    for sub, name in (("app-43", "TAKEN"), ("app-44", "no spaces allowed"), ("app-45", None)):
        user = connection_tokens.user_for(
            *_sub_name(verify(jwt.encode(claims(sub=sub, name=name), SECRET)))
        )
        assert user.username.startswith("ext-") and user.external_id == sub


def test_settings_refuse_short_secrets_and_bad_keys() -> None:
    with pytest.raises(ConfigError):
        load({"JWT_SECRET": "short"})
    with pytest.raises(ConfigError):
        load({"JWT_PUBLIC_KEY": "not a key"})
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ConfigError):
        load({"JWT_PUBLIC_KEY": public_pem(p384)})
    one_line = public_pem(EC_KEY).replace("\n", "\\n")
    assert "BEGIN PUBLIC KEY" in load({"JWT_PUBLIC_KEY": one_line})["JWT_PUBLIC_KEY"]
