"""Attachments' bytes (PROTOCOL 10): upload, download, and the removal of the unclaimed.

- `POST /api/conversations/<id>/attachments/` (multipart, field `file`): members only.
  The size is refused as early as the request allows: a `Content-Length` beyond
  `MAX_ATTACHMENT_BYTES` and the multipart framing before any of the body is read,
  and, whatever the header says, as soon as the file's bytes pass the limit while
  Django's multipart parser reads them (an upload handler placed before Django's
  own). The content type is sniffed from the bytes (puremagic), never taken from
  the client; the client's file name is kept only as `name`, sanitized; the
  storage name is random.
- `GET /api/attachments/<id>/`: members of its conversation (403 for others; 404
  for an unknown id, a removed or deleted attachment, and for an upload no message
  holds yet to anyone but its uploader: to the others it does not exist yet). Only
  PNG, JPEG, GIF and WebP are shown inline; everything else goes out as
  `application/octet-stream` with `Content-Disposition: attachment`. Behind nginx
  (`ATTACHMENT_ACCEL_REDIRECT`) the node answers with `X-Accel-Redirect` and nginx
  sends the file from its internal location (deploy/nginx.conf).
- `remove_unclaimed`, on every node's maintenance (at most once a minute): uploads no
  message holds `ATTACHMENT_UNCLAIMED_TTL` after their upload go, rows and files, in
  bounded batches through the partial index `attachment_unheld`.
- `delete_files`: storage names to delete, already gone ones ignored (for the delete
  of a message, on its commit).

The storage is Django's (`default_storage`, `STORAGES["default"]`): the file system
under `MEDIA_ROOT` embedded, any backend in production (docs/deployment.md).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import unicodedata
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import puremagic
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadhandler import FileUploadHandler
from django.db import transaction
from django.http import HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring import metrics
from realtime.chat import conversations
from realtime.chat.attachments import attachment_repr, delete_files
from realtime.models import Attachment
from realtime.protocol import Code, TetherError, bad_request
from realtime.rest import openapi as doc
from realtime.rest.errors import error_response
from realtime.rest.throttles import UserQuota

log = logging.getLogger("tether.attachments")

# Room for the multipart framing around the file (boundaries, the part's headers
# with its file name) in a `Content-Length` judged before the body is read.
MULTIPART_SLACK = 64 * 1024
MAX_NAME_CHARS = 200
# Types a browser may show inline: raster images that run nothing. Never SVG (it
# carries scripts), never HTML or text (a browser could be led to render them).
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
UNKNOWN_TYPE = "application/octet-stream"
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
# Served with every download (and by nginx's internal location): nothing in the
# file runs or loads anything, even if a browser is led to render it.
SANDBOX = "default-src 'none'; sandbox"
# Removal of the unclaimed: rows per transaction, transactions per pass, and how
# often a node looks (the query is an index probe; once a minute is plenty).
CLEANUP_BATCH = 200
CLEANUP_BATCHES_PER_PASS = 10
CLEANUP_EVERY = 60.0


def new_attachment_id() -> str:
    return "a_" + secrets.token_hex(10)


def sanitize_name(raw: Any) -> str:
    """The client's file name as shown to people: the last path part only, no
    control or formatting characters (no NUL, no right-to-left override), trimmed,
    at most MAX_NAME_CHARS characters (the extension kept when it is short)."""
    name = unicodedata.normalize("NFC", str(raw or ""))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name.strip(".") == "":
        return "file"
    if len(name) > MAX_NAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and 0 < len(extension) <= 16:
            name = stem[: MAX_NAME_CHARS - len(extension) - 1].rstrip() + "." + extension
        else:
            name = name[:MAX_NAME_CHARS].rstrip()
    return name


def sniff(upload: Any) -> str:
    """The content type the bytes say, by their signatures (puremagic); unknown:
    `application/octet-stream`. What the client claimed is never read."""
    try:
        found = puremagic.from_stream(upload, mime=True)
    except (puremagic.PureError, ValueError, OSError):
        found = ""
    finally:
        upload.seek(0)
    found = (found or "").strip().lower()
    return found if _MIME.fullmatch(found) else UNKNOWN_TYPE


def store(user: Any, conversation: Any, upload: Any) -> Attachment:
    """Write the bytes under a random storage name, then the row; no row, no file."""
    attachment = Attachment(
        id=new_attachment_id(),
        conversation=conversation,
        uploader=user,
        name=sanitize_name(upload.name),
        size=upload.size,
        content_type=sniff(upload),
    )
    attachment.file.save(secrets.token_hex(16), upload, save=False)
    try:
        attachment.save(force_insert=True)
    except BaseException:
        delete_files([attachment.file.name])
        raise
    metrics.ATTACHMENT_UPLOADS.inc()
    metrics.ATTACHMENT_UPLOAD_BYTES.inc(attachment.size)
    return attachment


def readable(user_id: int, attachment_id: Any) -> Attachment:
    """The attachment the user may download, or `not_found` / `forbidden`."""
    if not isinstance(attachment_id, str) or not conversations.valid_conversation_id(attachment_id):
        raise TetherError(Code.NOT_FOUND, "no such attachment")
    attachment = (
        Attachment.objects.select_related("message")
        .filter(id=attachment_id)
        .only(
            "id",
            "conversation_id",
            "uploader_id",
            "message_id",
            "message__deleted",
            "file",
            "name",
            "size",
            "content_type",
        )
        .first()
    )
    if attachment is None:
        raise TetherError(Code.NOT_FOUND, "no such attachment")
    if not conversations.is_member(user_id, attachment.conversation_id):
        raise TetherError(Code.FORBIDDEN, "you are not a member of that attachment's conversation")
    if attachment.message_id is None and attachment.uploader_id != user_id:
        # Until a message holds it, an upload is its uploader's draft.
        raise TetherError(Code.NOT_FOUND, "no such attachment")
    if attachment.message is not None and attachment.message.deleted:
        raise TetherError(Code.NOT_FOUND, "no such attachment (its message was deleted)")
    return attachment


def download_headers(attachment: Attachment) -> dict[str, str]:
    inline = attachment.content_type in INLINE_TYPES
    return {
        "Content-Type": attachment.content_type if inline else UNKNOWN_TYPE,
        "Content-Disposition": content_disposition_header(not inline, attachment.name) or "",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": SANDBOX,
        "Cross-Origin-Resource-Policy": "same-origin",
        # Revalidated each time: a removed member or a deleted message must not be
        # served from a cache.
        "Cache-Control": "private, no-cache",
    }


DOWNLOAD_CHUNK = 64 * 1024


async def _chunks(handle: Any) -> AsyncIterator[bytes]:
    """The file in chunks, each read on a pool thread; closed however the send ends."""
    read = sync_to_async(handle.read, thread_sensitive=False)
    try:
        while chunk := await read(DOWNLOAD_CHUNK):
            yield chunk
    finally:
        await sync_to_async(handle.close, thread_sensitive=False)()


def serve(attachment: Attachment) -> HttpResponseBase:
    headers = download_headers(attachment)
    prefix = settings.ATTACHMENT_ACCEL_REDIRECT
    response: HttpResponseBase
    if prefix:
        response = HttpResponse(status=200)
        response["X-Accel-Redirect"] = prefix + quote(attachment.file.name)
    else:
        try:
            handle = default_storage.open(attachment.file.name, "rb")
        except FileNotFoundError:
            raise TetherError(Code.NOT_FOUND, "no such attachment (its file is gone)") from None
        # An asynchronous iterator: under ASGI, Django would read a synchronous one
        # (FileResponse's) into memory whole before sending the first byte.
        response = StreamingHttpResponse(_chunks(handle))
        response["Content-Length"] = str(attachment.size)
    for name, value in headers.items():
        response[name] = value
    return response


# --- the size limit while the body is read ------------------------------------


class FileTooLarge(Exception):
    """An upload's bytes went past MAX_ATTACHMENT_BYTES while being read."""


class SizeCap(FileUploadHandler):
    """First of the upload handlers: counts every file byte of the request as the
    multipart parser reads it and stops the parse past `limit` (before Django's
    handlers keep or spool the chunk)."""

    def __init__(self, request: Any, limit: int) -> None:
        super().__init__(request)
        self.limit = limit
        self.seen = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.seen += len(raw_data)
        if self.seen > self.limit:
            raise FileTooLarge
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


def too_large(limit: int) -> Response:
    return error_response(Code.TOO_LARGE, f"the file is over {limit} bytes", 413, max_bytes=limit)


UPLOAD_PATH = re.compile(r"^/api/conversations/[^/]+/attachments/$")


def upload_bound(scope: dict[str, Any]) -> int | None:
    """For the ASGI body limit (realtime/transport/bodylimit.py, project/asgi.py): the
    largest body an upload may have (the file and its multipart framing)."""
    if scope.get("method") == "POST" and UPLOAD_PATH.match(scope.get("path", "")):
        return settings.MAX_ATTACHMENT_BYTES + MULTIPART_SLACK
    return None


def upload_refusal(bound: int) -> dict[str, Any]:
    limit = settings.MAX_ATTACHMENT_BYTES
    return {"detail": f"the file is over {limit} bytes", "max_bytes": limit}


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


# --- REST ----------------------------------------------------------------------


class AttachmentBody(serializers.Serializer):
    id = serializers.CharField(help_text="`a_…`")
    name = serializers.CharField(help_text="the client's file name, sanitized (no path parts)")
    size = serializers.IntegerField(help_text="bytes")
    content_type = serializers.CharField(
        help_text="sniffed from the bytes; `application/octet-stream` when unknown"
    )
    url = serializers.CharField(help_text="`/api/attachments/<id>/`")

    class Meta:
        ref_name = "Attachment"


class UploadBody(serializers.Serializer):
    file = doc.described(
        serializers.FileField(help_text="the file, not empty; its name is kept as `name`"),
        {"type": "string", "format": "binary", "minLength": 1},
    )

    class Meta:
        ref_name = "Upload"


CONVERSATION_ID = doc.path("conversation_id", doc.ID, "the conversation's id")
ATTACHMENT_ID = doc.path("attachment_id", doc.ID, "the attachment's id (`a_…`)")


class AttachmentsView(APIView):
    parser_classes = [MultiPartParser]
    throttle_classes = [UserQuota.of("uploads", "POST")]

    @extend_schema(
        summary="Upload an attachment",
        description="A file for a later message of the caller's in this conversation "
        "(`send`'s `attachments`). Until a message holds it only the caller can "
        "download it; one no message holds is removed `ATTACHMENT_UNCLAIMED_TTL` "
        "(24 h) after its upload. The content type is sniffed from the bytes.",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        request={"multipart/form-data": UploadBody},
        responses={
            201: AttachmentBody,
            400: doc.error("`bad_request` with `field` `file`: no file, or an empty one"),
            403: doc.error(
                "`forbidden`: not a member of that conversation, or no such conversation "
                "(the same answer)"
            ),
            413: doc.error("`too_large`: the file is over `MAX_ATTACHMENT_BYTES` (`max_bytes`)"),
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        conversation, _ = conversations.access_conversation(request.user.id, conversation_id)
        limit = settings.MAX_ATTACHMENT_BYTES
        declared = _declared_length(request)
        if declared is not None and declared > limit + MULTIPART_SLACK:
            return too_large(limit)  # the body is never read
        django_request = request._request
        django_request.upload_handlers.insert(0, SizeCap(django_request, limit))
        try:
            upload = request.FILES.get("file")
        except FileTooLarge:
            return too_large(limit)
        if upload is None:
            raise bad_request("file", "a file is required (multipart/form-data field `file`)")
        if upload.size == 0:
            raise bad_request("file", "the file is empty")
        if upload.size > limit:
            # Parsed before the cap was in place: Django's CSRF check reads a
            # session-authenticated POST's form first (the ASGI bound kept it small).
            return too_large(limit)
        attachment = store(request.user, conversation, upload)
        return Response(attachment_repr(attachment), status=201)


class AttachmentDetailView(APIView):
    @extend_schema(
        summary="Download an attachment",
        description="The bytes. PNG, JPEG, GIF and WebP come with their type, inline; "
        "everything else as `application/octet-stream` with `Content-Disposition: "
        "attachment`. Always `X-Content-Type-Options: nosniff` and a sandboxing "
        "`Content-Security-Policy`.",
        tags=["conversations"],
        parameters=[ATTACHMENT_ID],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="the bytes"
            ),
            (200, "image/png"): OpenApiTypes.BINARY,
            (200, "image/jpeg"): OpenApiTypes.BINARY,
            (200, "image/gif"): OpenApiTypes.BINARY,
            (200, "image/webp"): OpenApiTypes.BINARY,
            403: doc.error("`forbidden`: not a member of the attachment's conversation"),
            404: doc.error(
                "`not_found`: no such attachment, its message was deleted, or no message "
                "holds it yet and the caller did not upload it"
            ),
        },
    )
    def get(self, request: Request, attachment_id: str) -> HttpResponseBase:
        return serve(readable(request.user.id, attachment_id))

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The bytes are what they are; an `Accept: image/*` must not turn a refusal
        # into 406 either.
        return super().perform_content_negotiation(request, force=True)


# --- removal of the unclaimed ----------------------------------------------------


def remove_unclaimed(
    now: Any = None, batch: int = CLEANUP_BATCH, batches: int = CLEANUP_BATCHES_PER_PASS
) -> int:
    """Remove attachments no message holds, uploaded more than
    ATTACHMENT_UNCLAIMED_TTL ago: rows in transactions of `batch`, then their files;
    at most `batches` of them (the next pass goes on). Rows a `send` is claiming
    meanwhile are skipped (locked), and one it claimed is not deleted."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.ATTACHMENT_UNCLAIMED_TTL)
    removed = 0
    for _ in range(batches):
        with transaction.atomic():
            rows = list(
                Attachment.objects.select_for_update(skip_locked=True)
                .filter(message__isnull=True, created_at__lt=cutoff)
                .order_by("created_at")
                .values_list("id", "file")[:batch]
            )
            if rows:
                # Locked (PostgreSQL) or the database's one writer (SQLite): no `send`
                # claims them between the read and the delete.
                Attachment.objects.filter(id__in=[row[0] for row in rows]).delete()
        if not rows:
            break
        delete_files([row[1] for row in rows])
        removed += len(rows)
        if len(rows) < batch:
            break
    if removed:
        metrics.ATTACHMENTS_REMOVED.inc(removed)
        log.info("removed %d attachments no message held (older than %d s)", removed,
                 settings.ATTACHMENT_UNCLAIMED_TTL)  # fmt: skip
    return removed


_last_cleanup = [0.0]


def maintain() -> None:
    """The node maintenance's job: `remove_unclaimed` at most every CLEANUP_EVERY s."""
    clock = time.monotonic()
    if clock - _last_cleanup[0] < CLEANUP_EVERY and _last_cleanup[0]:
        return
    _last_cleanup[0] = clock
    remove_unclaimed()
