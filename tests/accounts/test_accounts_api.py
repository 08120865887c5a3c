"""REST auth endpoints and error shapes (PROTOCOL 9)."""

from __future__ import annotations

import gc
import re
import threading
from datetime import timedelta

import pytest
import redis.exceptions
from django.db import OperationalError
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import credentials
from accounts.models import ApiToken, User, WsTicket
from tests.support.services import postgres_service, rerun_on_postgresql  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

PASSWORD = "a-Long-test-passw0rd"


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password=PASSWORD)


def test_register_then_token_then_me(api: APIClient) -> None:
    r = api.post("/api/auth/register/", {"username": "dora", "password": PASSWORD}, format="json")
    assert r.status_code == 201 and r.json() == {"id": r.json()["id"], "username": "dora"}
    r = api.post("/api/auth/token/", {"username": "dora", "password": PASSWORD}, format="json")
    assert r.status_code == 200
    token = r.json()["token"]
    r = api.get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert r.status_code == 200 and r.json()["username"] == "dora"


def test_register_applies_password_validators_and_names_the_field(api: APIClient) -> None:
    # Each validator the register operation's description names.
    for password in ("123", "12345678901", "password123", "eve-the-user"):
        body = {"username": "eve-the-user", "password": password}
        r = api.post("/api/auth/register/", body, format="json")
        assert r.status_code == 400, password
        body = r.json()
        assert body["error"] == "bad_request" and body["detail"].startswith("password:")
        assert body["field"] == "password"


def test_names_and_passwords_are_json_strings(api: APIClient, alice: User) -> None:
    """DRF's CharField took `0` as "0"; the schema says strings."""
    for path in ("/api/auth/register/", "/api/auth/token/"):
        for body, field in (
            ({"username": 12345, "password": PASSWORD}, "username"),
            ({"username": "zed", "password": 12345678}, "password"),
        ):
            r = api.post(path, body, format="json")
            assert (r.status_code, r.json()["field"]) == (400, field), (path, body)


def test_register_duplicate_and_missing_fields(api: APIClient, alice: User) -> None:
    r = api.post("/api/auth/register/", {"username": "ALICE", "password": PASSWORD}, format="json")
    assert r.status_code == 400 and "username" in r.json()["detail"]
    r = api.post("/api/auth/register/", {}, format="json")
    assert r.status_code == 400 and "username" in r.json()["detail"]


def test_names_are_unique_whatever_their_case_or_width_even_racing(
    api: APIClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Full-width letters fold to "alice" when stored (NFKC): a 400, not a 500.
    wide = "\uff41\uff4c\uff49\uff43\uff45"  # "alice" in full-width letters
    r = api.post("/api/auth/register/", {"username": wide, "password": PASSWORD}, format="json")
    assert r.status_code == 400 and r.json()["detail"] == "username: this username is taken"
    # Two sign-ups racing on two nodes both pass the check; the database decides.
    monkeypatch.setattr(
        "accounts.serializers.RegisterSerializer.validate_username", lambda self, value: value
    )
    r = api.post("/api/auth/register/", {"username": "ALICE", "password": PASSWORD}, format="json")
    assert r.status_code == 400 and r.json() == {
        "error": "bad_request",
        "detail": "username: this username is taken",
        "field": "username",
    }
    assert User.objects.filter(username__iexact="alice").count() == 1


def test_register_can_be_disabled(api: APIClient, settings) -> None:
    settings.SIGNUP_ENABLED = False
    r = api.post("/api/auth/register/", {"username": "zed", "password": PASSWORD}, format="json")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_bad_json_body_is_a_json_error(api: APIClient) -> None:
    r = api.generic("POST", "/api/auth/token/", "{nope", content_type="application/json")
    assert r.status_code == 400 and r.json()["error"] == "bad_json"


@pytest.mark.parametrize(
    ("body", "status", "error", "detail"),
    [
        ("[" * 50_000 + "]" * 50_000, 400, "bad_json", "nests too deeply"),
        ('{"username": ' + "9" * 5000 + ', "password": "x"}', 400, "bad_request", "username:"),
        ('{"username": "a", "password": "x", "n": [1e999]}', 400, "bad_request", "n[0]:"),
        ('{"username": "a", "password": NaN}', 400, "bad_json", "NaN"),
        ('{"username": "' + "x" * 3_000_000 + '"}', 413, "too_large", "bytes"),
    ],
)
def test_bodies_no_parser_can_hold_are_client_errors(
    api: APIClient, body: str, status: int, error: str, detail: str
) -> None:
    r = api.generic("POST", "/api/auth/token/", body, content_type="application/json")
    assert (r.status_code, r.json()["error"]) == (status, error)
    assert detail in r.json()["detail"] and "sys." not in r.json()["detail"]


@pytest.mark.parametrize(
    "failure",
    [
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6390"),
        OperationalError("connection to server failed"),
    ],
)
def test_a_dependency_down_is_503_not_a_server_error(
    api: APIClient, alice: User, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr("accounts.views.authenticate", down)
    r = api.post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json")
    assert r.status_code == 503 and r.json()["error"] == "unavailable", r.json()
    assert type(failure).__name__ in r.json()["detail"]


def test_log_in_by_name_whatever_its_case(api: APIClient, alice: User) -> None:
    r = api.post("/api/auth/token/", {"username": "ALICE", "password": PASSWORD}, format="json")
    assert r.status_code == 200 and r.json()["token"].startswith("tt_")


def test_wrong_password_is_401_json(api: APIClient, alice: User) -> None:
    r = api.post("/api/auth/token/", {"username": "alice", "password": "nope"}, format="json")
    assert r.status_code == 401 and r.json()["error"] == "invalid_credentials"


def test_unauthenticated_and_bad_token_are_401_json(api: APIClient) -> None:
    r = api.get("/api/me/")
    assert r.status_code == 401 and r.json()["error"] == "not_authenticated"
    r = api.get("/api/me/", HTTP_AUTHORIZATION="Bearer tt_forged")
    assert r.status_code == 401 and r.json()["error"] == "not_authenticated"


def test_unknown_api_path_is_json_404(api: APIClient) -> None:
    r = api.get("/api/nothing-here/")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert r["Content-Type"].startswith("application/json")


def test_tokens_are_stored_hashed(alice: User) -> None:
    token, raw = credentials.issue_token(alice)
    stored = ApiToken.objects.values_list("key_hash", "prefix", "name").get(pk=token.pk)
    assert raw not in " ".join(stored)
    assert credentials.verify_token(raw).user == alice
    assert credentials.verify_token(raw + "x") is None


def test_tokens_checked_together_answer_each_one(alice: User) -> None:
    bob = User.objects.create_user("bob", password=PASSWORD, is_active=False)
    a_token, a_raw = credentials.issue_token(alice)
    b_token, b_raw = credentials.issue_token(bob)
    revoked, r_raw = credentials.issue_token(alice)
    revoked.delete()
    raws = [a_raw, "tt_unknown", b_raw, a_raw, r_raw, "not-a-token", "tt_" + "x" * 300]
    found = credentials.verify_tokens(raws)
    assert [t and (t.pk, t.user.username, t.user.is_active) for t in found] == [
        (a_token.pk, "alice", True),
        None,
        (b_token.pk, "bob", False),  # found; the socket closes 4403 for an inactive user
        (a_token.pk, "alice", True),
        None,
        None,
        None,
    ]
    assert found[0] is not found[3] and found[0].user is not found[3].user
    stamped = dict(ApiToken.objects.values_list("pk", "last_used_at"))
    assert stamped[a_token.pk] is not None and stamped[b_token.pk] is not None
    assert credentials.verify_tokens([]) == []


def test_ws_ticket_is_single_use_and_expires(api: APIClient, alice: User) -> None:
    api.force_authenticate(alice)
    r = api.post("/api/auth/ws-ticket/")
    assert r.status_code == 201 and r.json()["expires_in"] == 60
    raw = r.json()["ticket"]
    assert not WsTicket.objects.filter(key_hash=raw).exists()  # hashed at rest
    assert credentials.consume_ticket(raw).user == alice
    assert credentials.consume_ticket(raw) is None  # single use
    raw = credentials.issue_ticket(alice, "session:x")
    WsTicket.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert credentials.consume_ticket(raw) is None  # expired


def test_expired_tickets_are_purged(alice: User) -> None:
    fresh = credentials.issue_ticket(alice, "session:x")
    credentials.issue_ticket(alice, "session:x")
    WsTicket.objects.exclude(key_hash=credentials.digest(fresh)).update(
        expires_at=timezone.now() - timedelta(hours=2)
    )
    assert credentials.purge_tickets() == 1
    assert credentials.consume_ticket(fresh).user == alice


def test_ws_ticket_needs_authentication(api: APIClient) -> None:
    assert api.post("/api/auth/ws-ticket/").status_code == 401


def test_session_login_and_csrf_protected_api(alice: User) -> None:
    client = APIClient(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b'name="username"' in page.content
    csrf = page.cookies["csrftoken"].value
    r = client.post(
        "/accounts/login/",
        {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": csrf},
    )
    assert r.status_code == 302
    assert client.get("/api/me/").json()["username"] == "alice"
    r = client.post("/api/auth/ws-ticket/")  # no CSRF header
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    r = client.post("/api/auth/ws-ticket/", HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)
    assert r.status_code == 201


def test_health(client) -> None:
    r = client.get("/health/")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert client.head("/health/").status_code == 200  # load balancers probe with HEAD
    assert client.post("/health/").status_code == 405


def test_static_files_are_served_without_debug(client, settings) -> None:
    assert settings.DEBUG is False
    r = client.get("/static/tether/tether.css")
    assert r.status_code == 200
    r = client.get("/static/admin/css/base.css")
    assert r.status_code == 200


def test_seed_demo_is_idempotent(capsys, tmp_path) -> None:
    from django.core.management import call_command

    call_command("seed_demo", passwords_file=tmp_path / "pw.txt")
    first = capsys.readouterr().out
    call_command("seed_demo", passwords_file=tmp_path / "pw.txt")
    second = capsys.readouterr().out
    assert User.objects.filter(username__in=["alice", "bob"]).count() == 2
    assert first == second
    password = re.search(r"alice\s+password: (\S+)", first).group(1)
    assert User.objects.get(username="alice").check_password(password)
    from realtime.models import Conversation, Message

    assert Conversation.objects.filter(kind="direct").count() == 1  # not duplicated
    assert Message.objects.count() == 1


@pytest.mark.django_db
def test_password_guessing_is_throttled_per_address_and_per_user_name(settings) -> None:
    from django.core.cache import cache
    from django.test import Client

    settings.AUTH_RATE_LIMIT = "3/minute"
    cache.clear()
    User.objects.create_user("victim", password="a-Long-test-passw0rd")
    api = APIClient()
    for _ in range(3):
        response = api.post(
            "/api/auth/token/", {"username": "victim", "password": "guess"}, format="json"
        )
        assert response.status_code == 401
    response = api.post(
        "/api/auth/token/",
        {"username": "victim", "password": "a-Long-test-passw0rd"},
        format="json",
    )
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "rate_limited" and body["retry_after"] > 0
    # A forged X-Forwarded-For does not make a new address.
    response = api.post(
        "/api/auth/token/",
        {"username": "someone", "password": "guess"},
        format="json",
        HTTP_X_FORWARDED_FOR="203.0.113.7",
    )
    assert response.status_code == 429
    # The name is over its limit: an address that failed for it is refused after one
    # try, whatever the name's case, width or spaces...
    other = APIClient(REMOTE_ADDR="10.0.0.9")
    for name, expected in ((" VICTIM", 401), ("\uff56ictim", 429)):
        response = other.post(
            "/api/auth/token/", {"username": name, "password": "guess"}, format="json"
        )
        assert response.status_code == expected, name
    # ...but the owner, from an address that has not failed, still gets in.
    owner = APIClient(REMOTE_ADDR="10.0.0.10")
    response = owner.post(
        "/api/auth/token/",
        {"username": "victim", "password": "a-Long-test-passw0rd"},
        format="json",
    )
    assert response.status_code == 200
    # The login form too, before the password is checked.
    cache.clear()
    browser = Client()
    for _ in range(3):
        page = browser.post("/accounts/login/", {"username": "victim", "password": "guess"})
        assert page.status_code == 200 and b"Wrong username or password" in page.content
    page = browser.post(
        "/accounts/login/", {"username": "victim", "password": "a-Long-test-passw0rd"}
    )
    assert page.status_code == 429 and b"Too many attempts" in page.content
    assert int(page["Retry-After"]) > 0
    assert "_auth_user_id" not in browser.session
    cache.clear()


@pytest.mark.django_db(transaction=True)
def test_verifying_tokens_keeps_no_database_connections_alive() -> None:
    """Each ASGI request runs on a thread (and database connection) of its own: token
    verification must not keep those alive (it once cached converters bound to them,
    which grew a node by 500 MiB over 3,000 REST publishes)."""
    from django.db import connection
    from django.db.backends.base.base import BaseDatabaseWrapper

    user = User.objects.create(username="leak-check")
    _, raw = credentials.issue_token(user)

    def request_thread() -> None:
        try:
            assert credentials.verify_token(raw) is not None
        finally:
            connection.close()

    def wrappers() -> int:
        gc.collect()
        # type(), not isinstance(): isinstance asks a lazy object (a request's
        # csp_nonce left from an earlier test) for its __class__, which evaluates it.
        return sum(issubclass(type(o), BaseDatabaseWrapper) for o in gc.get_objects())

    def run(times: int) -> None:
        for _ in range(times):
            thread = threading.Thread(target=request_thread)
            thread.start()
            thread.join()

    run(2)
    before = wrappers()
    run(20)
    assert wrappers() <= before + 2


@pytest.mark.django_db(transaction=False)
def test_token_checks_on_postgresql(postgres_service) -> None:  # noqa: F811
    """PostgreSQL takes another path (arrays, bound parameters, no converters)."""
    rerun_on_postgresql(__file__, postgres_service, "tokens_ and not on_postgresql")


@pytest.mark.parametrize(
    "lookalike",
    ["\u0430lice", "p\u0430ypal", "\u0391lpha"],  # Cyrillic a, Cyrillic a, Greek Alpha
)
def test_sign_up_refuses_names_that_mix_scripts_to_pass_for_another(
    api: APIClient, lookalike: str
) -> None:
    r = api.post(
        "/api/auth/register/", {"username": lookalike, "password": PASSWORD}, format="json"
    )
    assert r.status_code == 400 and r.json()["detail"].startswith("username:"), r.json()
    assert "scripts" in r.json()["detail"]
    assert not User.objects.filter(username=lookalike).exists()
    # One script throughout is a name like any other.
    r = api.post(
        "/api/auth/register/",
        {"username": "\u0434\u0438\u043c\u0430", "password": PASSWORD},
        format="json",
    )
    assert r.status_code == 201


@pytest.mark.django_db
def test_the_django_admin_login_is_guarded_too(settings) -> None:
    from django.core.cache import cache
    from django.test import Client

    settings.AUTH_RATE_LIMIT = "3/minute"
    cache.clear()
    User.objects.create_user("op", password=PASSWORD, is_staff=True, is_superuser=True)
    browser = Client()
    for _ in range(3):
        page = browser.post("/admin/login/", {"username": "op", "password": "guess"})
        assert page.status_code == 200
    page = browser.post("/admin/login/", {"username": "op", "password": PASSWORD})
    assert page.status_code == 429 and int(page["Retry-After"]) > 0
    assert "_auth_user_id" not in browser.session
    cache.clear()
    page = browser.post("/admin/login/", {"username": "op", "password": PASSWORD})
    assert page.status_code == 302 and browser.session["_auth_user_id"]
    cache.clear()
