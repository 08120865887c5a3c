"""Attachments behind the shipped nginx site (deploy/nginx.conf), on PostgreSQL and Redis:
the node checks the caller and answers `X-Accel-Redirect`, nginx sends the bytes from
its internal location aliasing MEDIA_ROOT, and nothing reaches that location but
through a node."""

from __future__ import annotations

import http.client as httpclient
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chat.test_attachments import HTML, PNG, SVG
from tests.support.live import http
from tests.support.names import unique

ACCEL = "/_protected_media/"


@pytest.fixture
def media_root() -> Iterator[Path]:
    """Under /tmp and traversable: nginx's workers run as `nobody` when the tests are root."""
    root = Path(tempfile.mkdtemp(prefix="tether-media-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def request(
    front: Any, method: str, path: str, token: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes, dict[str, str]]:
    conn = httpclient.HTTPSConnection("127.0.0.1", front.https_port, timeout=15, context=front.ssl)
    try:
        conn.request(method, path, body, {"Authorization": f"Bearer {token}", **headers})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def upload(front: Any, token: str, conversation: str, name: str, data: bytes) -> Any:
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/html\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, raw, _ = request(
        front,
        "POST",
        f"/api/conversations/{conversation}/attachments/",
        token,
        body,
        **{"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    return status, json.loads(raw)


def test_downloads_through_nginx_with_x_accel_redirect(
    production_stack, make_node, make_nginx_front, media_root: Path
) -> None:
    node = make_node(
        production_stack,
        MEDIA_ROOT=str(media_root),
        ATTACHMENT_ACCEL_REDIRECT=ACCEL,
        MAX_ATTACHMENT_BYTES=str(1 << 20),
    )
    front = make_nginx_front([node], media_root=media_root)
    alice, bob, eve = (node.register(unique(n)) for n in ("alice", "bob", "eve"))
    bearer = {"Authorization": f"Bearer {bob}"}
    status, me, _ = http("GET", f"{node.url}/api/me/", headers=bearer)
    assert status == 200
    cid = node.create_group(alice, "files", [me["id"]])

    # A 700 KB PNG (more than nginx's and the node's in-memory buffers) and an HTML page.
    big_png = PNG + os.urandom(700_000)
    status, picture = upload(front, alice, cid, "holiday.png", big_png)
    assert status == 201, picture
    assert picture["content_type"] == "image/png" and picture["size"] == len(big_png)
    status, page = upload(front, alice, cid, "page.html", HTML)
    assert status == 201 and page["content_type"] == "text/html", page
    status, drawing = upload(front, alice, cid, "drawing.svg", SVG)
    assert status == 201 and drawing["content_type"] == "image/svg+xml", drawing
    # What the node answers by itself: the location, the headers, no bytes.
    rows = production_stack.sql(
        "SELECT id, file FROM realtime_attachment WHERE id IN (%s, %s, %s)",
        picture["id"],
        page["id"],
        drawing["id"],
    )
    storage = dict(rows)
    assert all((media_root / name).is_file() for name in storage.values())
    status, body, headers = http(
        "GET", node.url + picture["url"], headers={"Authorization": f"Bearer {alice}"}
    )
    assert status == 200 and body == ""
    assert headers["X-Accel-Redirect"] == ACCEL + storage[picture["id"]]

    # The uploader downloads the exact bytes through nginx, inline with its type.
    status, raw, headers = request(front, "GET", picture["url"], alice)
    assert status == 200 and raw == big_png
    assert headers["Content-Type"] == "image/png"
    assert headers["Content-Disposition"] == 'inline; filename="holiday.png"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    # HTML and SVG: downloads, never rendered.
    for item, data, name in ((page, HTML, "page.html"), (drawing, SVG, "drawing.svg")):
        status, raw, headers = request(front, "GET", item["url"], alice)
        assert status == 200 and raw == data
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == f'attachment; filename="{name}"'
        assert headers["X-Content-Type-Options"] == "nosniff"

    # Bob is a member, but no message holds the upload yet: not his to read.
    assert request(front, "GET", picture["url"], bob)[0] == 404
    # Eve is no member: 403 in the REST shape, and no bytes.
    status, raw, _ = request(front, "GET", picture["url"], eve)
    assert status == 403 and json.loads(raw)["error"] == "forbidden"
    # The internal location cannot be asked for from outside, whoever asks.
    for token in (alice, eve):
        status, raw, _ = request(front, "GET", ACCEL + storage[picture["id"]], token)
        assert status == 404 and big_png not in raw
    # Deleted (row and file): 404.
    production_stack.sql("DELETE FROM realtime_attachment WHERE id = %s", picture["id"])
    (media_root / storage[picture["id"]]).unlink()
    status, raw, _ = request(front, "GET", picture["url"], alice)
    assert status == 404 and json.loads(raw)["error"] == "not_found"
    assert "Traceback" not in node.log_text()


def test_uploads_over_the_limit_are_413_too_large_at_nginx_and_at_the_node(
    production_stack, make_node, make_nginx_front, media_root: Path
) -> None:
    node = make_node(production_stack, MEDIA_ROOT=str(media_root), MAX_ATTACHMENT_BYTES="100000")
    front = make_nginx_front([node], media_root=media_root)
    alice = node.register(unique("alice"))
    cid = node.create_group(alice, "files")
    # Over the node's limit, within nginx's: the node refuses it.
    status, body = upload(front, alice, cid, "a.png", PNG + b"\x00" * 150_000)
    assert status == 413 and body["error"] == "too_large" and body["max_bytes"] == 100_000
    # Over nginx's client_max_body_size (11m): nginx refuses it, in the same shape.
    status, body = upload(front, alice, cid, "b.png", PNG + b"\x00" * (12 << 20))
    assert status == 413 and body["error"] == "too_large"
    assert not [p for p in media_root.rglob("*") if p.is_file()]
    # Without ATTACHMENT_ACCEL_REDIRECT the node streams the file itself.
    # (in chunks: 90 KB is two of them).
    data = PNG + os.urandom(90_000)
    status, picture = upload(front, alice, cid, "small.png", data)
    assert status == 201, picture
    status, raw, headers = request(front, "GET", picture["url"], alice)
    assert status == 200 and raw == data and "X-Accel-Redirect" not in headers
    assert headers["Content-Length"] == str(len(data)) and headers["Content-Type"] == "image/png"
    production_stack.sql("DELETE FROM realtime_attachment WHERE id = %s", picture["id"])
    assert production_stack.sql(
        "SELECT count(*) FROM realtime_attachment WHERE conversation_id = %s", cid
    ) == [(0,)]
