"""REST for topics (PROTOCOL 9): publish, and read history."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.protocol import Code, TetherError, bad_request
from realtime.rest import openapi as doc
from realtime.rest.parsing import int_param, json_body
from realtime.rest.permissions import PUBLISH, has_scope, holds
from realtime.rest.throttles import UserQuota
from realtime.topics import service as topics
from realtime.topics.store import get_store

TOPIC = doc.path(
    "topic",
    {"type": "string", "pattern": "^[a-z0-9_-]{1,32}:[A-Za-z0-9_.@-]{1,128}$"},
    "`namespace:name`",
)
BAD_TOPIC = "`bad_request`: `topic` is not `namespace:name`"


class PublishBody(serializers.Serializer):
    data = serializers.JSONField(help_text="any JSON value, at most MAX_FRAME_BYTES encoded")

    class Meta:
        ref_name = "Publish"


class Published(serializers.Serializer):
    topic = serializers.CharField()
    offset = serializers.IntegerField(min_value=1)
    epoch = serializers.CharField()

    class Meta:
        ref_name = "Published"


class Publication(serializers.Serializer):
    offset = serializers.IntegerField(min_value=1)
    data = serializers.JSONField()
    ts = serializers.IntegerField(help_text="ms since the epoch")

    class Meta:
        ref_name = "Publication"


class TopicHistory(serializers.Serializer):
    topic = serializers.CharField()
    epoch = serializers.CharField()
    offset = serializers.IntegerField(min_value=0, help_text="the topic's latest offset")
    publications = Publication(many=True)
    has_more = serializers.BooleanField(
        help_text="more after the last one: ask again with `since` = its offset"
    )
    complete = serializers.BooleanField(
        help_text="whether history still holds every publication after `since`"
    )

    class Meta:
        ref_name = "TopicHistory"


def may_publish(request: Request) -> bool:
    """A credential with the `publish` scope (`issue_token --publish`), or a staff
    account with the permission to publish (docs/security.md)."""
    if has_scope(request, "publish"):
        return True
    return holds(request.user, PUBLISH)


class PublishView(APIView):
    @extend_schema(
        summary="Publish to a topic",
        tags=["topics"],
        parameters=[TOPIC],
        request=PublishBody,
        responses={
            201: Published,
            400: doc.error(
                f"{BAD_TOPIC}; `data` missing; `too_large`: `data` over MAX_FRAME_BYTES"
            ),
            403: doc.error(
                f"`forbidden`: neither a token with the `publish` scope nor a staff account "
                f"with the `{PUBLISH}` permission; an unknown namespace"
            ),
        },
    )
    def post(self, request: Request, topic: str) -> Response:
        if not may_publish(request):
            raise TetherError(
                Code.FORBIDDEN,
                f"publishing needs a token with the `publish` scope or a staff account "
                f"with the `{PUBLISH}` permission",
            )
        data = json_body(request)
        if "data" not in data:
            raise bad_request("data", "is required")
        return Response(topics.publish(topic, data["data"]), status=status.HTTP_201_CREATED)


# A page of history: PROTOCOL 9 lists are paged ("has_more"); history can hold
# up to a namespace's history_size publications of up to 64 KiB each.
HISTORY_PAGE = 100
MAX_HISTORY_PAGE = 1000


@async_to_sync
async def _history(topic: str, ns: Any, since: int | None, limit: int) -> dict[str, Any]:
    store = get_store()
    snap = await store.snapshot(topic, ns, None, None)
    after = since if since is not None else max(0, snap.offset - ns.history_size)
    epoch, entries = await store.read_range(topic, ns, after, snap.offset)
    return {
        "topic": topic,
        "epoch": epoch or snap.epoch,
        "offset": snap.offset,
        "publications": [topics.publication(e) for e in entries[:limit]],
        # The next page: `since` = the last publication's offset.
        "has_more": len(entries) > limit,
        # Addition to PROTOCOL 9: whether history still holds every publication
        # after `since` (the older ones may have been trimmed or expired).
        "complete": len(entries) == max(0, snap.offset - after),
    }


def _page_size(request: Request) -> int:
    limit = int_param(request, "limit", HISTORY_PAGE) or HISTORY_PAGE
    if limit > MAX_HISTORY_PAGE:
        raise bad_request("limit", f"must be from 1 to {MAX_HISTORY_PAGE}")
    return limit


class HistoryView(APIView):
    throttle_classes = [UserQuota.of("topic_history", "GET")]

    @extend_schema(
        summary="A topic's history",
        description="What history holds after `since` (by default all it holds), "
        f"oldest first, {HISTORY_PAGE} a page unless `limit` says otherwise; with "
        "`has_more`, the next page is `since` = the last publication's offset.",
        tags=["topics"],
        parameters=[
            TOPIC,
            doc.query("since", doc.INTEGER_GE0, "an offset"),
            doc.query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_HISTORY_PAGE},
                f"publications a page (default {HISTORY_PAGE})",
            ),
        ],
        responses={
            200: TopicHistory,
            400: doc.error(
                f"{BAD_TOPIC}; `since` not an integer >= 0; `limit` not 1 to {MAX_HISTORY_PAGE}"
            ),
            403: doc.error("`forbidden`: may not subscribe to it; an unknown namespace"),
        },
    )
    def get(self, request: Request, topic: str) -> Response:
        ns = topics.readable_namespace(request.user, topic)
        return Response(_history(topic, ns, int_param(request, "since"), _page_size(request)))
