"""API tokens with a life cycle (docs/security.md): expiry, listing and revoking one's
own, a new password revoking them, tickets dying with what minted them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import credentials
from accounts.models import ApiToken, User, WsTicket

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "a-Long-test-passw0rd"


def bearer(raw: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api


def test_an_expired_token_no_longer_authenticates() -> None:
    user = User.objects.create_user("exp", password=PASSWORD)
    token, raw = credentials.issue_token(user, expires_in=timedelta(hours=1))
    assert bearer(raw).get("/api/me/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    r = bearer(raw).get("/api/me/")
    assert (r.status_code, r.json()["error"]) == (401, "not_authenticated")


def test_login_tokens_expire_after_api_token_ttl(settings) -> None:
    settings.API_TOKEN_TTL = 7
    User.objects.create_user("ttl", password=PASSWORD)
    r = APIClient().post(
        "/api/auth/token/", {"username": "ttl", "password": PASSWORD}, format="json"
    )
    token = credentials.verify_token(r.json()["token"])
    assert timedelta(days=6, hours=23) < token.expires_at - timezone.now() <= timedelta(days=7)
    settings.API_TOKEN_TTL = 0
    r = APIClient().post(
        "/api/auth/token/", {"username": "ttl", "password": PASSWORD}, format="json"
    )
    assert credentials.verify_token(r.json()["token"]).expires_at is None


def test_a_user_lists_and_revokes_only_their_own_tokens() -> None:
    ann = User.objects.create_user("ann", password=PASSWORD)
    bob = User.objects.create_user("bob", password=PASSWORD)
    mine, raw = credentials.issue_token(ann, name="laptop", scopes=["publish"])
    credentials.issue_token(ann, name="phone", expires_in=timedelta(days=1))
    theirs, _ = credentials.issue_token(bob, name="bob's")
    listed = bearer(raw).get("/api/auth/tokens/").json()["tokens"]
    assert {t["name"] for t in listed} == {"laptop", "phone"}
    laptop = next(t for t in listed if t["name"] == "laptop")
    assert laptop["scopes"] == ["publish"] and laptop["expires_at"] is None
    assert "key_hash" not in laptop and laptop["prefix"] == raw[:10]
    r = bearer(raw).delete(f"/api/auth/tokens/{theirs.pk}/")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    assert ApiToken.objects.filter(pk=theirs.pk).exists()
    assert bearer(raw).delete(f"/api/auth/tokens/{mine.pk}/").status_code == 204
    assert bearer(raw).get("/api/me/").status_code == 401  # revoked: itself included


def test_a_new_password_revokes_the_users_tokens_and_their_tickets() -> None:
    user = User.objects.create_user("pw", password=PASSWORD)
    _, raw = credentials.issue_token(user)
    ticket = bearer(raw).post("/api/auth/ws-ticket/").json()["ticket"]
    user.set_password("another-Long-passw0rd")
    user.save()
    assert not ApiToken.objects.filter(user=user).exists()
    assert credentials.consume_ticket(ticket) is None
    assert bearer(raw).get("/api/me/").status_code == 401


def test_a_revoked_tokens_tickets_cannot_be_redeemed() -> None:
    user = User.objects.create_user("rev", password=PASSWORD)
    token, raw = credentials.issue_token(user)
    ticket = bearer(raw).post("/api/auth/ws-ticket/").json()["ticket"]
    token.delete()
    assert not WsTicket.objects.filter(used_at__isnull=True).exists()
    assert credentials.consume_ticket(ticket) is None


def test_issue_token_expires_in(capsys) -> None:
    User.objects.create_user("cli")
    call_command("issue_token", "cli", "--expires-in", "12h")
    token = credentials.verify_token(capsys.readouterr().out.strip())
    assert (
        timedelta(hours=11, minutes=59) < token.expires_at - timezone.now() <= timedelta(hours=12)
    )
    for bad in ("12", "0h", "1w", "-5m"):
        with pytest.raises(CommandError):
            call_command("issue_token", "cli", "--expires-in", bad)


def test_a_logged_out_sessions_tickets_cannot_be_redeemed() -> None:
    from django.test import Client

    User.objects.create_user("out", password=PASSWORD)
    browser = Client()
    assert browser.login(username="out", password=PASSWORD)
    ticket = browser.post("/api/auth/ws-ticket/").json()["ticket"]
    browser.post("/accounts/logout/")
    assert credentials.consume_ticket(ticket) is None
