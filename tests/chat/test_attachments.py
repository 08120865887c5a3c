"""Attachment storage and serving (PROTOCOL 10) through Django's test client: who may
upload and download, the size limit (before the body is read, and while it is),
sniffed types and what is shown inline, names, the files under MEDIA_ROOT, and the
removal of uploads no message took."""

from __future__ import annotations

import struct
import warnings
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.test.client import encode_multipart
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import credentials
from accounts.models import User
from realtime.chat import conversations, uploads
from realtime.models import Attachment, Message
from tests.support.names import unique
from tests.support.services import postgres_service, rerun_on_postgresql  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

BOUNDARY = "tether-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def png_bytes(width: int = 1, height: int = 1) -> bytes:
    """A real PNG (signature, IHDR, IDAT, IEND with their CRCs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = png_bytes()
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
)
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def multipart(
    name: str, data: bytes, content_type: str = "text/html", field: str = "file"
) -> bytes:
    """A multipart body by hand: the client's name and type are what a hostile client says."""
    return (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    settings.MEDIA_ROOT = str(root)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root)},
        },
    }
    settings.ATTACHMENT_ACCEL_REDIRECT = ""
    return root


class Person:
    def __init__(self) -> None:
        self.user = User.objects.create_user(unique("u"), password="pw-Not-common-123")
        self.client = APIClient()
        self.client.credentials(
            HTTP_AUTHORIZATION=f"Bearer {credentials.issue_token(self.user)[1]}"
        )

    def upload(self, conversation_id: str, body: bytes, **extra: Any) -> Any:
        return self.client.generic(
            "POST",
            f"/api/conversations/{conversation_id}/attachments/",
            body,
            content_type=MULTIPART,
            **extra,
        )

    def get(self, attachment_id: str) -> Any:
        return self.client.get(f"/api/attachments/{attachment_id}/")


@pytest.fixture
def alice() -> Person:
    return Person()


@pytest.fixture
def bob() -> Person:
    return Person()


@pytest.fixture
def eve() -> Person:
    return Person()


@pytest.fixture
def group(alice: Person, bob: Person) -> str:
    return conversations.check_create_group(alice.user, "files", [bob.user.pk]).id


def content(response: Any) -> bytes:
    """The body; a download streams from an asynchronous iterator (for ASGI), which
    the test client's synchronous side collects."""
    if not response.streaming:
        return response.content
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "must consume asynchronous iterators": expected here
        return b"".join(response)


def hold(attachment_id: str, sender: Person) -> Message:
    """What `send` does for the attachment: a message holds it."""
    attachment = Attachment.objects.get(id=attachment_id)
    message = Message.objects.create(
        id="m_" + unique("x")[-20:],
        conversation_id=attachment.conversation_id,
        seq=Message.objects.filter(conversation_id=attachment.conversation_id).count() + 1,
        sender=sender.user,
        client_id=unique("c"),
        body="",
        ts=0,
    )
    Attachment.objects.filter(id=attachment_id).update(message=message)
    return message


def test_a_png_named_txt_claimed_as_html_is_stored_sniffed_and_shown_inline(
    alice: Person, bob: Person, group: str, media_root: Path
) -> None:
    r = alice.upload(group, multipart("../../etc/evil.txt", PNG, "text/html"))
    assert r.status_code == 201, r.content
    body = r.json()
    assert body == {
        "id": body["id"],
        "name": "evil.txt",
        "size": len(PNG),
        "content_type": "image/png",
        "url": f"/api/attachments/{body['id']}/",
    }
    assert body["id"].startswith("a_")
    row = Attachment.objects.get(id=body["id"])
    assert (row.conversation_id, row.uploader_id, row.message_id) == (group, alice.user.pk, None)
    # Written under MEDIA_ROOT, by a random name that owes nothing to the client's.
    stored = media_root / row.file.name
    assert stored.read_bytes() == PNG
    assert row.file.name.startswith("attachments/") and "evil" not in row.file.name
    assert len(Path(row.file.name).name) == 32

    r = alice.get(body["id"])
    assert r.status_code == 200
    assert content(r) == PNG
    assert r["Content-Type"] == "image/png"
    assert r["Content-Disposition"].startswith("inline;")
    assert r["X-Content-Type-Options"] == "nosniff"
    assert r["Content-Security-Policy"] == uploads.SANDBOX


@pytest.mark.parametrize(
    ("name", "data", "sniffed"),
    [
        ("page.html", HTML, "text/html"),
        ("pic.svg", SVG, "image/svg+xml"),
        ("picture.png", b"\x00\x01 not an image at all \xfe", "application/octet-stream"),
        ("notes.txt", b"hello, plain words\n", "application/octet-stream"),
    ],
)
def test_anything_but_a_safe_image_is_a_download_of_octet_stream(
    alice: Person, group: str, name: str, data: bytes, sniffed: str
) -> None:
    r = alice.upload(group, multipart(name, data, "image/png"))
    assert r.status_code == 201, r.content
    assert r.json()["content_type"] == sniffed
    r = alice.get(r.json()["id"])
    assert r.status_code == 200 and content(r) == data
    assert r["Content-Type"] == "application/octet-stream"
    assert r["Content-Disposition"].startswith("attachment;")
    assert f"filename*=utf-8''{name}" in r["Content-Disposition"].lower() or (
        f'filename="{name}"' in r["Content-Disposition"]
    )
    assert r["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in r["Content-Security-Policy"]


def test_a_gif_is_inline_and_a_name_beyond_ascii_is_said_with_filename_star(
    alice: Person, group: str
) -> None:
    r = alice.upload(group, multipart("été 🌞.gif", GIF, "application/x-evil"))
    assert r.status_code == 201 and r.json()["content_type"] == "image/gif"
    assert r.json()["name"] == "été 🌞.gif"
    r = alice.get(r.json()["id"])
    assert r["Content-Type"] == "image/gif"
    assert r["Content-Disposition"] == "inline; filename*=utf-8''%C3%A9t%C3%A9%20%F0%9F%8C%9E.gif"


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("a\x00b\u202egnp.exe", "abgnp.exe"),
        ("  spaced  ", "spaced"),
        ("..", "file"),
        ("", "file"),
        ("dir/", "file"),
        ("x" * 300 + ".jpeg", "x" * 195 + ".jpeg"),
        ("y" * 300, "y" * 200),
    ],
)
def test_names_keep_no_path_and_are_bounded(raw: str, kept: str) -> None:
    assert uploads.sanitize_name(raw) == kept
    assert len(uploads.sanitize_name(raw)) <= uploads.MAX_NAME_CHARS


def test_members_only_and_unclaimed_uploads_are_their_uploaders(
    alice: Person, bob: Person, eve: Person, group: str
) -> None:
    # Upload: a non-member and an unknown conversation get the same 403.
    for conversation in (group, "k_no_such"):
        r = eve.upload(conversation, multipart("a.png", PNG))
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.content
    assert not Attachment.objects.exists()
    assert APIClient().post(f"/api/conversations/{group}/attachments/").status_code == 401

    attachment_id = alice.upload(group, multipart("a.png", PNG)).json()["id"]
    assert eve.get(attachment_id).status_code == 403
    assert eve.get(attachment_id).json()["error"] == "forbidden"
    # Until a message holds it, the upload is its uploader's: to the others it does not exist.
    assert bob.get(attachment_id).status_code == 404
    assert alice.get(attachment_id).status_code == 200
    message = hold(attachment_id, alice)
    r = bob.get(attachment_id)
    assert r.status_code == 200 and content(r) == PNG
    assert eve.get(attachment_id).status_code == 403
    # A member removed from the conversation no longer reads it.
    conversations.check_remove_member(bob.user, group, bob.user.pk)
    assert bob.get(attachment_id).status_code == 403
    # Its message deleted: 404 for everyone, even before its rows are purged.
    Message.objects.filter(id=message.id).update(deleted=True)
    r = alice.get(attachment_id)
    assert r.status_code == 404 and r.json()["error"] == "not_found"

    for unknown in ("a_nothing", "x" * 65):
        r = alice.get(unknown)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert APIClient().get(f"/api/attachments/{attachment_id}/").status_code == 401


def test_a_row_or_file_gone_is_404(alice: Person, group: str, media_root: Path) -> None:
    first = alice.upload(group, multipart("a.png", PNG)).json()["id"]
    second = alice.upload(group, multipart("b.png", PNG)).json()["id"]
    row = Attachment.objects.get(id=first)
    Attachment.objects.filter(id=first).delete()
    assert alice.get(first).status_code == 404
    (media_root / Attachment.objects.get(id=second).file.name).unlink()
    r = alice.get(second)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    uploads.delete_files([row.file.name, row.file.name, ""])  # gone already: no error
    assert not (media_root / row.file.name).exists()


def test_a_session_caller_uploads_with_csrf(alice: Person, group: str) -> None:
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(alice.user)
    r = session.generic(
        "POST", f"/api/conversations/{group}/attachments/", multipart("a.png", PNG),
        content_type=MULTIPART,
    )  # fmt: skip
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    session.get("/api/me/")
    plain = APIClient()
    plain.force_login(alice.user)
    r = plain.post(
        f"/api/conversations/{group}/attachments/",
        encode_multipart(BOUNDARY, {"file": _named(PNG, "x.png")}),
        content_type=MULTIPART,
    )
    assert r.status_code == 201, r.content
    assert plain.get(r.json()["url"]).status_code == 200


def _named(data: bytes, name: str) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="text/plain")


def test_missing_or_empty_file_is_400_naming_file(alice: Person, group: str) -> None:
    for body in (multipart("a.png", b""), multipart("a.png", PNG, field="other"), b""):
        r = alice.upload(group, body)
        assert r.status_code == 400, (body, r.content)
        assert (r.json()["error"], r.json()["field"]) == ("bad_request", "file")
    assert not Attachment.objects.exists()


def test_sizes_at_and_over_the_limit(alice: Person, group: str, settings, media_root: Path) -> None:
    settings.MAX_ATTACHMENT_BYTES = 5000
    data = PNG + b"\x00" * (5000 - len(PNG))
    r = alice.upload(group, multipart("at.png", data))
    assert r.status_code == 201 and r.json()["size"] == 5000
    r = alice.upload(group, multipart("over.png", data + b"\x00"))
    assert r.status_code == 413, r.content
    assert r.json()["error"] == "too_large" and r.json()["max_bytes"] == 5000
    assert Attachment.objects.count() == 1
    assert len([p for p in media_root.rglob("*") if p.is_file()]) == 1


def test_an_upload_spooled_to_a_temporary_file_is_stored_readable_by_the_web_server(
    alice: Person, group: str, settings, media_root: Path
) -> None:
    """Past FILE_UPLOAD_MAX_MEMORY_SIZE Django keeps the upload in a temporary file
    (mode 0600) and the storage moves it: it still ends 0644, for nginx's user."""
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000
    data = PNG + bytes(range(256)) * 40
    r = alice.upload(group, multipart("big.png", data))
    assert r.status_code == 201 and r.json()["content_type"] == "image/png"
    stored = media_root / Attachment.objects.get(id=r.json()["id"]).file.name
    assert stored.read_bytes() == data
    assert stored.stat().st_mode & 0o777 == 0o644
    assert content(alice.get(r.json()["id"])) == data


class Unread:
    """A request body that records whether anything read it (and holds nothing)."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, *args: Any) -> bytes:
        self.reads += 1
        return b""

    readline = read


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(
    alice: Person, group: str, settings
) -> None:
    settings.MAX_ATTACHMENT_BYTES = 5000
    length = 5000 + uploads.MULTIPART_SLACK + 1
    body = Unread()
    r = alice.upload(group, b"", CONTENT_LENGTH=str(length), **{"wsgi.input": body})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert body.reads == 0
    # At the bound the body is read (and here found to hold no file).
    body = Unread()
    r = alice.upload(group, b"", CONTENT_LENGTH=str(length - 1), **{"wsgi.input": body})
    assert r.status_code == 400 and body.reads > 0


class Counting:
    def __init__(self, data: bytes) -> None:
        self.data, self.taken = data, 0

    def read(self, size: int = -1) -> bytes:
        size = len(self.data) - self.taken if size is None or size < 0 else size
        chunk = self.data[self.taken : self.taken + size]
        self.taken += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        end = self.data.find(b"\n", self.taken)
        return self.read((end + 1 - self.taken) if end >= 0 else -1)


def test_a_body_that_goes_past_the_limit_is_cut_off_while_read(
    alice: Person, group: str, settings, monkeypatch: pytest.MonkeyPatch, media_root: Path
) -> None:
    """A Content-Length that passes (here: the framing allowance made huge) does not
    let the bytes through: the parse stops once the file passes the limit."""
    settings.MAX_ATTACHMENT_BYTES = 1000
    monkeypatch.setattr(uploads, "MULTIPART_SLACK", 1 << 30)
    body = multipart("big.bin", b"\x01" * (4 << 20))
    stream = Counting(body)
    r = alice.upload(group, b"", CONTENT_LENGTH=str(len(body)), **{"wsgi.input": stream})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert stream.taken <= 512 * 1024, stream.taken  # of 4 MiB
    assert not Attachment.objects.exists()
    assert not [p for p in media_root.rglob("*") if p.is_file()]


def test_uploads_are_counted_by_their_quota(alice: Person, group: str, settings) -> None:
    settings.QUOTA_UPLOADS = "2/hour"
    assert [alice.upload(group, multipart("a.png", PNG)).status_code for _ in range(3)] == [
        201,
        201,
        429,
    ]


def test_behind_nginx_the_node_names_the_file_with_x_accel_redirect(
    alice: Person, eve: Person, group: str, settings
) -> None:
    settings.ATTACHMENT_ACCEL_REDIRECT = "/_protected_media/"
    attachment_id = alice.upload(group, multipart("page.html", HTML)).json()["id"]
    name = Attachment.objects.get(id=attachment_id).file.name
    r = alice.get(attachment_id)
    assert r.status_code == 200 and content(r) == b""
    assert r["X-Accel-Redirect"] == f"/_protected_media/{name}"
    assert r["Content-Type"] == "application/octet-stream"
    assert r["Content-Disposition"] == 'attachment; filename="page.html"'
    assert r["X-Content-Type-Options"] == "nosniff"
    r = eve.get(attachment_id)
    assert r.status_code == 403 and "X-Accel-Redirect" not in r


def _aged(attachment_id: str, hours: float) -> None:
    Attachment.objects.filter(id=attachment_id).update(
        created_at=timezone.now() - timedelta(hours=hours)
    )


def test_unclaimed_uploads_older_than_the_ttl_are_removed_rows_and_files(
    alice: Person, group: str, media_root: Path, django_assert_max_num_queries
) -> None:
    ids = [alice.upload(group, multipart(f"{n}.png", PNG)).json()["id"] for n in range(4)]
    old_unclaimed, old_held, new_unclaimed, just_young = ids
    _aged(old_unclaimed, 25)
    _aged(old_held, 25)
    _aged(just_young, 23)
    hold(old_held, alice)
    files = {i: media_root / Attachment.objects.get(id=i).file.name for i in ids}

    assert uploads.remove_unclaimed() == 1
    assert set(Attachment.objects.values_list("id", flat=True)) == {
        old_held,
        new_unclaimed,
        just_young,
    }
    assert not files[old_unclaimed].exists()
    assert all(files[i].exists() for i in (old_held, new_unclaimed, just_young))
    # Nothing to do: one probe of the partial index.
    with django_assert_max_num_queries(3):
        assert uploads.remove_unclaimed() == 0


def test_removal_goes_in_bounded_batches(alice: Person, group: str, media_root: Path) -> None:
    ids = [alice.upload(group, multipart(f"{n}.png", PNG)).json()["id"] for n in range(5)]
    for attachment_id in ids:
        _aged(attachment_id, 48)
    assert uploads.remove_unclaimed(batch=2, batches=1) == 2
    assert Attachment.objects.count() == 3
    assert uploads.remove_unclaimed(batch=2) == 3
    assert not Attachment.objects.exists()
    assert not [p for p in media_root.rglob("*") if p.is_file()]


def test_the_removal_runs_on_node_maintenance_at_most_once_a_minute(
    alice: Person, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from realtime.node import runtime

    assert uploads.maintain in runtime._maintenance_jobs
    calls: list[int] = []
    monkeypatch.setattr(uploads, "remove_unclaimed", lambda: calls.append(1) or 0)
    monkeypatch.setattr(uploads, "_last_cleanup", [0.0])
    uploads.maintain()
    uploads.maintain()
    assert calls == [1]


def test_the_storage_is_djangos_default_storage(alice: Person, group: str) -> None:
    attachment_id = alice.upload(group, multipart("a.png", PNG)).json()["id"]
    name = Attachment.objects.get(id=attachment_id).file.name
    assert default_storage.exists(name)
    uploads.delete_files([name])
    assert not default_storage.exists(name)


@pytest.mark.django_db(transaction=False)
def test_the_same_rules_hold_on_postgresql(postgres_service) -> None:  # noqa: F811
    """PostgreSQL takes other paths (the removal's row locks, SKIP LOCKED): run this file there."""
    rerun_on_postgresql(__file__, postgres_service, "not on_postgresql")
