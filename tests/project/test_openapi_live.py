"""The served OpenAPI schema against a live node: the REST contract is exact.

Schemathesis (its `st run` command, as a subprocess: the one route that runs every
check, the stateful ones included, with the engine's own bookkeeping) generates
requests from `/api/schema/` for every operation and runs **every** check on each
answer (`--checks all`): no 5xx, documented statuses, content types, headers and
bodies; schema-valid requests accepted (`positive_data_acceptance`) and
schema-violating ones refused (`negative_data_rejection`); missing auth refused
(`ignored_auth`), undocumented methods refused (`unsupported_method`, with
`Allow`), required headers, and the stateful ones (`use_after_free`,
`ensure_resource_availability`, object-level authorization). It does so three
times: as staff (a superuser), as an ordinary user and as a service token with
every scope, each in its examples, coverage, fuzzing and stateful phases,
derandomized (`generation.deterministic`: the same cases every run) and bounded
per operation.

What the configuration (`config_toml`) settles, and why:

- `allow-extra-parameters = false`: unknown query parameters and body fields are
  ignored by contract (PROTOCOL 1: "Unknown fields are ignored"), so a request
  that adds one is not invalid and must not be refused; the only object that
  forbids extra keys, the `{"external_id"}` user reference, says so in the schema
  (`additionalProperties: false`) and the code refuses them.
- `allow-x00 = false`: NUL (U+0000) is refused with 400 in every URL and in every
  text a store keeps (PostgreSQL cannot hold it); the schema says so once, in its
  description, rather than on each string, and `test_text_no_store_can_hold_is_refused`
  asks for NUL in each place.
- `SAYS_400_BEYOND_SCHEMA`: some rules cannot be said in a schema, and the
  contract answers them with 400 naming the field: Django's password validators
  (similarity to the username, common passwords) and a username already taken at
  sign-up, a direct conversation's fixed members, a direct conversation with
  oneself. The operations' descriptions name them, and `positive_data_acceptance`
  also expects 400 on those operations, and only there (every other check, and
  every other operation, is as schemathesis ships it).
- Ids are drawn, half the time, from real resources (a conversation the caller
  belongs to, a topic with history, an external id, the users for `user_id` and a
  body's `user`), so generated requests also reach past "not a member" and "no
  such user".
- `use_after_free` is off for one path, `…/messages/{message_id}/`: a
  conversation event's `id` is an idempotency key shared with sends (PROTOCOL
  10), so an edit or a delete that repeats the key of an earlier send or delete
  is answered with that event's ack (`duplicate: true`, 200), as the contract
  says, whatever the path names; the stateful phase links a send's `id` into
  that path and takes the repeat's 200 for a deleted resource still served.
  Every other check runs there, and `use_after_free` everywhere else.
- Operations that can end the caller's own access (revoking its token, leaving
  its group) run last, on their own (`ENDS_OWN_ACCESS`); each identity must still
  be in after the rest, or every answer after the first revocation would be a 401
  that passes every check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import WAIT_MS, launch_chromium
from tests.support.live import DaphneNode, Stack, http, manage
from tests.support.names import unique

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = 12  # generated cases per operation and phase
SCOPES = "publish,chat,users,presence,connections"
ENDS_OWN_ACCESS = (
    "auth_tokens_destroy",
    "conversations_members_destroy",
    "server_conversations_members_destroy",
)
# Operations where a schema-valid request may get 400 naming a field, by contract,
# for a rule no schema can say (docs/protocol.md, section 9): path -> why.
SAYS_400_BEYOND_SCHEMA = {
    "/api/auth/register/": "password validators; a username taken or mixing scripts",
    "/api/server/users/{external_id}/": "a username taken or mixing scripts",
    "/api/conversations/": "a direct conversation with the caller themself",
    "/api/conversations/{conversation_id}/members/": "a direct conversation's members",
    "/api/conversations/{conversation_id}/members/{user_id}/": "a direct conversation's members",
    "/api/server/conversations/": "a direct conversation of one user twice",
    "/api/server/conversations/{conversation_id}/members/": "a direct conversation's members",
    "/api/server/conversations/{conversation_id}/members/{user_id}/": "the same",
    "/api/push/subscriptions/": "an endpoint that is not https, is private or local, or does "
    "not resolve; keys no message can be encrypted for",
    # PROTOCOL 10: what `reply_to` and `attachments` name must exist (another member's
    # upload, one a message holds already, a message of another conversation).
    "/api/conversations/{conversation_id}/messages/": "reply_to or attachments naming "
    "no message, or no attachment of the caller's there that no message holds",
    "/api/server/conversations/{conversation_id}/messages/": "the same",
    "/api/conversations/{conversation_id}/messages/{message_id}/": "an edit of a deleted message",
}
# positive_data_acceptance's default statuses, and 400 there.
# See "use_after_free" in the module's docstring.
IDEMPOTENT_EVENT_PATH = "/api/conversations/{conversation_id}/messages/{message_id}/"
ACCEPTED_THERE = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def toml_list(values: list[Any]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def config_toml(real: dict[str, list[Any]]) -> str:
    """schemathesis.toml for the run: `real` maps parameters (`path.topic`,
    `body.user`) to existing ids, drawn half the time."""
    lines = [
        "workers = 2",
        # No crash cache: every run the same cases, none replayed from an earlier one.
        "[cache]",
        "enabled = false",
        "[generation]",
        "deterministic = true",
        f"max-examples = {MAX_EXAMPLES}",
        'mode = "all"',
        "allow-x00 = false",
        "allow-extra-parameters = false",
        'database = "none"',
        "[checks]",
        "enabled = true",
    ]
    for key, values in real.items():
        lines += [f"[dictionaries.{key.replace('.', '_')}]", f"values = {toml_list(values)}"]
    lines.append("[parameters]")
    for key in real:
        name = key.replace(".", "_")
        lines.append(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}')
    lines += [
        "[[operations]]",
        f'include-path = "{IDEMPOTENT_EVENT_PATH}"',
        "checks.use_after_free.enabled = false",
    ]
    for path in SAYS_400_BEYOND_SCHEMA:
        lines += [
            "[[operations]]",
            f'include-path = "{path}"',
            f"checks.positive_data_acceptance.expected-statuses = {toml_list(ACCEPTED_THERE)}",
        ]
    return "\n".join(lines) + "\n"


def run_schemathesis(
    schema_file: Path, config: Path, base_url: str, token: str, selection: list[str]
) -> tuple[int, str]:
    """`st run` with every check as the holder of `token`; (exit code, output)."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",  # the `st` command, from this interpreter
        "--config-file",
        str(config),
        "run",
        str(schema_file),
        "--url",
        base_url,
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--no-color",
        *selection,
    ]
    # In the config's folder: schemathesis writes there, never in the project.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, cwd=config.parent
    )
    return result.returncode, result.stdout + result.stderr


def test_every_operation_answers_as_its_schema_says(
    embedded_stack: Stack, make_node: Callable[..., DaphneNode], tmp_path: Path
) -> None:
    """Every check over every operation, as staff, as a user and as a service token.

    One node on the embedded stack keeps it near a minute and a half; what SQLite
    and PostgreSQL refuse differently (huge integers, NUL) has its own tests below
    and in tests/chat, run in both modes."""
    node = make_node(embedded_stack)
    staff = node.staff_token(unique("staff"))
    user_name = unique("user")
    user_token = node.register(user_name)
    backend = unique("backend")
    node.register(backend)
    service = manage(node.stack.env(), "issue_token", backend, "--scope", SCOPES)
    service_token = service.stdout.strip()

    # Real resources: a group with a message for each identity (its own, since one
    # run may leave it or remove the others), a topic with history and a user of the
    # application's backend.
    status, me, _ = http("GET", node.url + "/api/me/", headers=bearer(user_token))
    assert status == 200, me

    def seeded_group(token: str, members: list[int]) -> str:
        url = node.url + "/api/conversations/"
        body = {"kind": "group", "title": "fuzzed", "members": members}
        status, group, _ = http("POST", url, body, bearer(token))
        assert status == 201, group
        url += f"{group['id']}/messages/"
        status, sent, _ = http("POST", url, {"id": unique("seed"), "body": "hello"}, bearer(token))
        assert status == 201, sent
        seeded[group["id"]] = sent["message_id"]
        return group["id"]

    seeded: dict[str, str] = {}  # group → its message (PROTOCOL 10's edit, delete, react)

    groups = {
        "staff": seeded_group(staff, [me["id"]]),
        "user": seeded_group(user_token, []),
        "service": seeded_group(staff, [me["id"]]),
    }

    def seeded_attachment(token: str, group: str) -> str:
        """An upload in the group (its uploader reads it: a 200 with bytes to check)."""
        body = (
            b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\r\n--b0--\r\n"
        )
        request = urllib.request.Request(
            node.url + f"/api/conversations/{group}/attachments/",
            data=body,
            method="POST",
            headers={**bearer(token), "Content-Type": "multipart/form-data; boundary=b0"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            return json.loads(response.read())["id"]

    # The service identity is in no group: it reads staff's (403).
    attachments = {
        "staff": seeded_attachment(staff, groups["staff"]),
        "user": seeded_attachment(user_token, groups["user"]),
    }
    attachments["service"] = attachments["staff"]
    status, body, _ = http(
        "POST", node.url + "/api/topics/prices:FUZZ/publish/", {"data": {"p": 1}}, bearer(staff)
    )
    assert status == 201, body
    status, body, _ = http(
        "PUT",
        node.url + "/api/server/users/fuzz-1/",
        {"username": unique("ext")},
        bearer(service_token),
    )
    assert status == 201, body
    # Every user: members to add (`body.user`) and to remove (`path.user_id`).
    user_ids = [row[0] for row in node.stack.sql("SELECT id FROM accounts_user ORDER BY id")]

    status, served, headers = http("GET", node.url + "/api/schema/?format=json")
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert served["openapi"].startswith("3.")
    operations = sorted(
        f"{method.upper()} {path}"
        for path, item in served["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    )
    # Every route of PROTOCOL 9 and 12 is described, the plain Django ones included.
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
        "POST /api/conversations/{conversation_id}/attachments/",
        "GET /api/attachments/{attachment_id}/",
        "PATCH /api/conversations/{conversation_id}/messages/{message_id}/",
        "DELETE /api/conversations/{conversation_id}/messages/{message_id}/",
        "POST /api/conversations/{conversation_id}/messages/{message_id}/reactions/",
        "POST /api/topics/{topic}/publish/",
        "GET /api/topics/{topic}/history/",
        "PUT /api/server/users/{external_id}/",
        "POST /api/server/users/{external_id}/disconnect/",
        "POST /api/server/conversations/",
        "POST /api/server/conversations/{conversation_id}/members/",
        "DELETE /api/server/conversations/{conversation_id}/members/{user_id}/",
        "POST /api/server/conversations/{conversation_id}/messages/",
        "GET /api/server/presence/",
        "POST /api/server/publish/",
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

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(served))

    def still_in(token: str, group: str | None) -> bool:
        status, _, _ = http("GET", node.url + "/api/me/", headers=bearer(token))
        if group is not None:
            url = node.url + f"/api/conversations/{group}/"
            status = max(status, http("GET", url, headers=bearer(token))[0])
        return status == 200

    started = time.monotonic()
    failed: list[str] = []
    summaries: list[str] = []
    tested = 0
    for who, token in (("staff", staff), ("user", user_token), ("service", service_token)):
        config = tmp_path / who / "schemathesis.toml"
        config.parent.mkdir()
        real = {
            "path.conversation_id": [groups[who]],
            "path.attachment_id": [attachments[who]],
            "path.message_id": [seeded[groups[who]]],
            "path.topic": ["prices:FUZZ"],
            "path.external_id": ["fuzz-1"],
            "path.user_id": user_ids,
            "body.user": user_ids,
        }
        config.write_text(config_toml(real))
        member = None if who == "service" else groups[who]
        # Operations that can end the caller's own access (revoking its token, leaving
        # the group) run after the rest, on their own: run first, they would turn
        # every later answer into 401 or 403 and the checks into formalities.
        for part, selection in (
            ("the rest", [f"--exclude-operation-id={op}" for op in ENDS_OWN_ACCESS]),
            ("ending access", [f"--include-operation-id={op}" for op in ENDS_OWN_ACCESS]),
        ):
            code, output = run_schemathesis(schema_file, config, node.url, token, selection)
            (config.parent / f"{part.replace(' ', '-')}.txt").write_text(output)
            found = re.search(r"Tested: (\d+)", output)
            tested += int(found.group(1)) if found else 0
            cases = re.search(r"Test cases:\s*\n\s*(.+)", output)
            summaries.append(f"as {who}, {part}: {cases.group(1) if cases else '?'}")
            if code != 0:
                failed.append(f"===== as {who}, {part} (exit {code})\n{output[-12000:]}")
            if part == "the rest" and not still_in(token, member):
                failed.append(f"===== as {who}: lost access during the run\n{output[-4000:]}")
    elapsed = time.monotonic() - started
    # Not vacuous: every operation was tested as every identity.
    assert tested == 3 * len(operations), (tested, len(operations))
    assert not failed, "\n".join(failed)
    assert "Traceback" not in node.log_text()
    print(f"every check, three identities, {len(operations)} operations: {elapsed:.1f} s")
    print("\n".join(summaries))


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
