"""The served OpenAPI schema against a live node .

Schemathesis generates requests from `/api/schema/` for every operation, valid
and invalid ones, and each answer must be no 5xx, a documented status, a
documented content type and a body that conforms to its schema. The runs are
derandomized (the same cases every time) and bounded per operation so the whole
fuzz stays near a minute on a small machine.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.browser import WAIT_MS, launch_chromium
from tests.support.live import DaphneNode, Stack, http
from tests.support.names import unique

pytestmark = pytest.mark.timeout(300)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fuzz_case(
    operation: Any, base_url: str, headers: dict[str, str], sent: dict[str, int]
) -> Callable[[Any], None]:
    """Send one generated case and run every check on the answer."""

    def send(case: Any) -> None:
        sent[operation.label] = sent.get(operation.label, 0) + 1
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

    return send


def fuzz(
    schema: Any,
    base_url: str,
    headers: dict[str, str],
    max_examples: int,
    path_parameters: Callable[[Any], dict[str, Any] | None] = lambda op: None,
) -> tuple[dict[str, str], dict[str, int]]:
    """Fuzz every operation in both modes; (failures, requests sent per operation).

    Failures are collected rather than raised so one run names every operation
    that misbehaves, each with its shrunk (smallest) failing case.
    """
    failures: dict[str, str] = {}
    sent: dict[str, int] = {}
    bounded = settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # the same cases on every run
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in MODES:
            strategy = operation.as_strategy(
                generation_mode=mode, path_parameters=path_parameters(operation)
            )
            run = bounded(given(case=strategy)(fuzz_case(operation, base_url, headers, sent)))
            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): no negative case.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
            # A failed check (several come as a group): keep going, report all at the end.
            except (Exception, BaseExceptionGroup) as exc:
                failures[f"{operation.label} [{mode.value}]"] = str(exc)[:3000]
    return failures, sent


def test_every_operation_answers_as_its_schema_says(node: DaphneNode) -> None:
    """In both modes: SQLite and PostgreSQL refuse different values (huge ints, NUL)."""
    staff = node.staff_token(unique("staff"))
    user_token = node.register(unique("user"))

    # Real resources, so generated requests also reach past "not a member".
    status, group, _ = http(
        "POST",
        node.url + "/api/conversations/",
        {"kind": "group", "title": "fuzzed", "members": []},
        bearer(staff),
    )
    assert status == 201, group
    status, body, _ = http(
        "POST",
        node.url + f"/api/conversations/{group['id']}/messages/",
        {"id": "seed-1", "body": "hello"},
        bearer(staff),
    )
    assert status == 201, body
    status, body, _ = http(
        "POST", node.url + "/api/topics/prices:FUZZ/publish/", {"data": {"p": 1}}, bearer(staff)
    )
    assert status == 201, body

    status, served, headers = http("GET", node.url + "/api/schema/?format=json")
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert served["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(served)
    operations = [r.ok().label for r in schema.get_all_operations()]
    # Every route of PROTOCOL 9 is described, the plain Django ones included.
    for label in (
        "POST /api/auth/register/",
        "POST /api/auth/token/",
        "POST /api/auth/ws-ticket/",
        "GET /api/me/",
        "GET /api/users/",
        "GET /api/conversations/",
        "POST /api/conversations/",
        "GET /api/conversations/{conversation_id}/",
        "POST /api/conversations/{conversation_id}/members/",
        "DELETE /api/conversations/{conversation_id}/members/{user_id}/",
        "GET /api/conversations/{conversation_id}/messages/",
        "POST /api/conversations/{conversation_id}/messages/",
        "POST /api/topics/{topic}/publish/",
        "GET /api/topics/{topic}/history/",
        "GET /api/admin/connections/",
        "DELETE /api/admin/connections/{connection_id}/",
        "POST /api/admin/connections/cleanup/",
        "GET /api/admin/config/",
        "GET /api/stats/",
        "GET /health/",
        "GET /ready/",
        "GET /metrics",
    ):
        assert label in operations

    def real(operation: Any) -> dict[str, Any] | None:
        names = {p.name for p in operation.path_parameters}
        pinned = {"conversation_id": group["id"], "topic": "prices:FUZZ"}
        return {k: v for k, v in pinned.items() if k in names} or None

    started = time.monotonic()
    failures: dict[str, str] = {}
    runs = (
        ("staff", bearer(staff), 12, lambda op: None),
        ("staff, real ids", bearer(staff), 8, real),
        ("user", bearer(user_token), 3, lambda op: None),
    )
    total = 0
    for who, auth, examples, pin in runs:
        found, sent = fuzz(schema, node.url, auth, examples, pin)
        failures.update({f"{who}: {k}": v for k, v in found.items()})
        # Not vacuous: every operation was called in every run.
        assert sorted(sent) == sorted(operations), (who, sent)
        total += sum(sent.values())
    elapsed = time.monotonic() - started

    assert not failures, "\n\n".join(f"== {k}\n{v}" for k, v in failures.items())
    assert "Traceback" not in node.log_text()
    print(f"{total} generated requests in {elapsed:.1f} s")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


def test_docs_page_renders_under_the_content_security_policy(
    embedded_stack: Stack, make_node: Callable[..., DaphneNode], browser: Any
) -> None:
    node = make_node(embedded_stack)
    status, text, headers = http("GET", node.url + "/api/schema/")
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.oai.openapi")
    assert text.startswith("openapi: 3.")  # YAML unless ?format=json
    status, page, headers = http("GET", node.url + "/api/docs/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # No inline script or style: every <script> has a src, and no <style> element.
    assert "<style" not in page
    scripts = re.findall(r"<script([^>]*)>", page)
    assert scripts and all("src=" in attrs for attrs in scripts), scripts
    for src in re.findall(r'<script[^>]*src="([^"]+)"', page):
        status, _, script_headers = http("GET", node.url + src.replace("&amp;", "&"))
        assert status == 200, src
        assert "javascript" in script_headers["Content-Type"], (src, script_headers)
    assert "/static/drf_spectacular_sidecar/" in page  # no CDN

    # A real browser: the operations render and the policy refused nothing.
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    refused: list[str] = []
    tab.on(
        "console", lambda msg: refused.append(msg.text) if "Security Policy" in msg.text else None
    )
    tab.on("pageerror", lambda exc: refused.append(str(exc)))
    tab.goto(node.url + "/api/docs/")
    tab.wait_for_selector("text=/api/conversations/{conversation_id}/messages/")
    assert tab.locator(".opblock").count() >= 20
    assert refused == []
    context.close()


def test_text_no_store_can_hold_is_refused(node: DaphneNode) -> None:
    """Lone surrogates and NUL were 500s (SQLite and PostgreSQL); the fuzzer's text
    rarely holds them, so each is asked for here, in both modes."""
    token = node.staff_token(unique("staff"))  # staff, to reach publish's body
    auth = {**bearer(token), "Content-Type": "application/json"}
    status, group, _ = http(
        "POST", node.url + "/api/conversations/", {"kind": "group", "title": "t"}, auth
    )
    assert status == 201, group
    messages = f"/api/conversations/{group['id']}/messages/"

    def raw(method: str, path: str, text: str | None = None) -> tuple[int, Any]:
        # Raw JSON text: json.dumps would never write a lone surrogate this way.
        request = urllib.request.Request(
            node.url + path, data=None if text is None else text.encode(), method=method
        )
        for name, value in auth.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    for path, text in (
        ("/api/conversations/", '{"kind": "group", "title": "a\\ud800"}'),
        (messages, '{"id": "s1", "body": "\\udc00"}'),
        (messages, '{"id": "\\ud800", "body": "hi"}'),
        ("/api/topics/prices:S/publish/", '{"data": ["\\ud800"]}'),
    ):
        status, body = raw("POST", path, text)
        assert (status, body["error"]) == (400, "bad_json"), (path, text, body)
        assert "surrogate" in body["detail"]
    for path, text, field in (
        ("/api/conversations/", '{"kind": "group", "title": "a\\u0000"}', "title"),
        (messages, '{"id": "s2", "body": "a\\u0000b"}', "body"),
        (messages, '{"id": "s\\u0000", "body": "hi"}', "id"),
    ):
        status, body = raw("POST", path, text)
        assert (status, body["error"], body.get("field")) == (400, "bad_request", field), body
    for path, field in (
        ("/api/conversations/k%00/", "path"),
        ("/api/users/?username=a%00", "username"),
        (messages + "?after=1&before=%00", "before"),
    ):
        status, body = raw("GET", path)
        assert (status, body["error"], body.get("field")) == (400, "bad_request", field), body
    # What is still fine: a surrogate pair is one character, NUL inside published data
    # is escaped in its JSON, and the message store is unchanged by the refusals.
    status, body = raw("POST", messages, '{"id": "s3", "body": "\\ud83d\\ude00"}')
    assert status == 201 and body["body"] == "\U0001f600", body
    status, body = raw("POST", "/api/topics/prices:S/publish/", '{"data": "a\\u0000"}')
    assert status == 201, body
    status, body = raw("GET", messages)
    assert [m["client_id"] for m in body["messages"]] == ["s3"]
    assert "Traceback" not in node.log_text()
