"""Upload bodies bounded at the ASGI layer, before Django spools them
(realtime/transport/bodylimit.py, wired in project/asgi.py for attachment uploads)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from django.core.asgi import get_asgi_application

from project.asgi import application
from realtime.chat import uploads
from realtime.transport.bodylimit import BodyLimitMiddleware
from tests.support.names import unique

PATH = "/api/conversations/k123/attachments/"


def scope(path: str = PATH, method: str = "POST", length: int | None = None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"multipart/form-data; boundary=x")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


class Endless:
    """A client that keeps sending 40 KB chunks: counts what was taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        self.taken += 1
        return {"type": "http.request", "body": b"\x00" * 40_000, "more_body": True}


class Sent(list):
    async def __call__(self, message: dict[str, Any]) -> None:
        self.append(message)

    def status(self) -> int:
        return next(m["status"] for m in self if m["type"] == "http.response.start")

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self if "body" in m))


async def no_receive() -> dict[str, Any]:
    raise AssertionError("the body was read")


async def test_a_content_length_over_the_bound_is_413_before_anything_is_read(settings) -> None:
    settings.MAX_ATTACHMENT_BYTES = 1000

    async def app(*args: Any) -> None:
        raise AssertionError("Django was called")

    sent = Sent()
    limited = BodyLimitMiddleware(app, uploads.upload_bound, uploads.upload_refusal)
    await limited(scope(length=1000 + uploads.MULTIPART_SLACK + 1), no_receive, sent)
    assert sent.status() == 413
    assert sent.json() == {
        "error": "too_large",
        "detail": "the file is over 1000 bytes",
        "max_bytes": 1000,
    }


async def test_a_body_growing_past_the_bound_is_cut_off_and_django_answers_nothing(
    settings,
) -> None:
    """Django's own ASGI handler behind it: it reads until told the client left,
    then stops without an answer of its own; the client gets the one 413."""
    settings.MAX_ATTACHMENT_BYTES = 1000
    client = Endless()
    sent = Sent()
    limited = BodyLimitMiddleware(
        get_asgi_application(), uploads.upload_bound, uploads.upload_refusal
    )
    await limited(scope(length=None), client, sent)
    bound = 1000 + uploads.MULTIPART_SLACK
    assert client.taken == bound // 40_000 + 1  # the chunk that passed the bound, no more
    assert sent.status() == 413 and sent.json()["error"] == "too_large"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


async def test_other_paths_and_bodies_within_the_bound_pass_untouched(settings) -> None:
    settings.MAX_ATTACHMENT_BYTES = 1000
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["path"], await receive()))

    async def small() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x" * 100, "more_body": False}

    limited = BodyLimitMiddleware(app, uploads.upload_bound, uploads.upload_refusal)
    for path, method, length in (
        (PATH, "POST", 100),
        ("/api/conversations/k1/messages/", "POST", 10**9),
        (PATH, "GET", 10**9),
    ):
        await limited(scope(path, method, length), small, Sent())
    assert [path for path, _ in seen] == [PATH, "/api/conversations/k1/messages/", PATH]
    assert all(message["body"] == b"x" * 100 for _, message in seen)


def test_the_node_application_bounds_uploads() -> None:
    """project.asgi wraps Django's HTTP side in the limit, with the uploads' bound."""
    http_app = application.app.app.application_mapping["http"]  # RawSend → NodeStart → router
    assert isinstance(http_app, BodyLimitMiddleware)
    assert http_app.bound is uploads.upload_bound


def test_under_uvicorn_a_huge_content_length_is_refused_without_waiting_for_the_body(
    embedded_stack, make_node
) -> None:
    """A live node under uvicorn (bodies stream in): 50 MB announced, 100 bytes sent,
    and the 413 comes at once."""
    node = make_node(embedded_stack, server="uvicorn", MAX_ATTACHMENT_BYTES="1000")
    token = node.register(unique("big"))
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as conn:
        conn.sendall(
            (
                f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {token}\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\n"
                f"Content-Length: {50 << 20}\r\n\r\n"
            ).encode()
            + b"-" * 100
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        elapsed = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(body)["error"] == "too_large"
    assert elapsed < 5


def raw_post(port: int, token: str, path: str, body: bytes, boundary: str = "b0") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Authorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_under_daphne_upload_bodies_reach_django_as_sent(embedded_stack, make_node) -> None:
    """Twisted's own multipart parse is off (realtime/transport/daphne_compat.py): a body
    with no part is Django's `bad_request` naming `file`, not Twisted's bare 400; and a
    body over the bound is the limit's 413."""
    node = make_node(embedded_stack, MAX_ATTACHMENT_BYTES="1000")
    token = node.register(unique("up"))
    path = f"/api/conversations/{node.create_group(token, 't')}/attachments/"
    head, _, body = raw_post(node.port, token, path, b"--b0--\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert json.loads(body)["field"] == "file"
    big = b"x" * (1000 + uploads.MULTIPART_SLACK + 1)
    head, _, body = raw_post(node.port, token, path, big).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"] == "too_large"
