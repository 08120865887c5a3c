"""REST for conversations, members and messages (PROTOCOL 9); the same services as the sockets."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.chat import conversations, messages, sends
from realtime.chat.representations import message_repr
from realtime.models import Conversation
from realtime.protocol import bad_request, user_repr
from realtime.rest import openapi as doc
from realtime.rest.parsing import int_param, json_body
from realtime.rest.throttles import UserQuota

MAX_PAGE = 200

CONVERSATION_ID = doc.path("conversation_id", {"type": "string"}, "the conversation's id")
NOT_MEMBER = doc.error(
    "`forbidden`: not a member of that conversation, or no such conversation (the same answer)"
)
BAD_ID = "`bad_request`: `conversation` is not an id (1 to 64 characters)"


class ConversationsView(APIView):
    throttle_classes = [UserQuota.of("conversations", "POST")]

    @extend_schema(
        summary="The caller's conversations",
        operation_id="conversations_list",
        description="Highest `last_seq` first.",
        tags=["conversations"],
        parameters=[
            doc.query(
                "limit", {"type": "integer", "minimum": 0, "maximum": MAX_PAGE}, "0 means 50"
            ),
            doc.query("offset", doc.INTEGER_GE0, "conversations to skip"),
        ],
        responses={
            200: doc.ConversationList,
            400: doc.error("`bad_request`: `limit` or `offset` out of range"),
        },
    )
    def get(self, request: Request) -> Response:
        limit = int_param(request, "limit", 50) or 50
        if limit > MAX_PAGE:
            raise bad_request("limit", f"must be at most {MAX_PAGE}")
        offset = int_param(request, "offset", 0) or 0
        items, has_more = conversations.list_conversations(request.user.id, limit, offset)
        return Response({"conversations": items, "has_more": has_more})

    @extend_schema(
        summary="Create a group, or find or create a direct conversation",
        tags=["conversations"],
        request=doc.NEW_CONVERSATION,
        responses={
            200: doc.ConversationBody,
            201: doc.ConversationBody,
            400: doc.error("`bad_request`: `kind`, `title` or `members` invalid"),
            404: doc.error("`not_found`: unknown or disabled user ids in `members`"),
        },
    )
    def post(self, request: Request) -> Response:
        data = json_body(request)
        kind = data.get("kind")
        if kind == Conversation.GROUP:
            conversation = conversations.check_create_group(
                request.user, data.get("title"), data.get("members")
            )
            created = True
        elif kind == Conversation.DIRECT:
            conversation, created = conversations.check_create_direct(
                request.user, data.get("members")
            )
        else:
            raise bad_request("kind", 'must be "group" or "direct"')
        return Response(
            conversations.represent(conversation, request.user.id),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ConversationDetailView(APIView):
    @extend_schema(
        summary="One conversation",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        responses={200: doc.ConversationBody, 400: doc.error(BAD_ID), 403: NOT_MEMBER},
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        conversation, _ = conversations.access_conversation(request.user.id, conversation_id)
        return Response(conversations.represent(conversation, request.user.id))


class MembersView(APIView):
    throttle_classes = [UserQuota.of("members", "POST")]

    @extend_schema(
        summary="Add a member to a group",
        description="201 when added, 200 when already a member.",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        request=doc.AddMember,
        responses={
            200: doc.MemberAdded,
            201: doc.MemberAdded,
            400: doc.error(f"{BAD_ID}; `user` not an integer; a direct conversation"),
            403: NOT_MEMBER,
            404: doc.error("`not_found`: no such active user"),
            409: doc.error("`limit_exceeded`: the group has 1000 members"),
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        user, added = conversations.check_add_member(
            request.user, conversation_id, json_body(request).get("user")
        )
        return Response(
            {"conversation": conversation_id, "user": user_repr(user)},
            status=status.HTTP_201_CREATED if added else status.HTTP_200_OK,
        )


class MemberDetailView(APIView):
    @extend_schema(
        summary="Remove a member (or leave)",
        tags=["conversations"],
        parameters=[
            CONVERSATION_ID,
            doc.path("user_id", doc.INTEGER_GE0, "the member's user id"),
        ],
        responses={
            204: OpenApiResponse(description="removed"),
            400: doc.error(f"{BAD_ID}; a direct conversation"),
            403: doc.error(
                "`forbidden`: not a member, or neither that user nor the conversation's creator"
            ),
            404: doc.error("`not_found`: that user is not a member"),
        },
    )
    def delete(self, request: Request, conversation_id: str, user_id: int) -> Response:
        conversations.check_remove_member(request.user, conversation_id, user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessagesView(APIView):
    throttle_classes = [UserQuota.of("messages", "POST")]

    @extend_schema(
        summary="A conversation's messages",
        description="In increasing `seq`: the latest ones, those `before` a seq, or those "
        "`after` one (as the socket `history`).",
        tags=["conversations"],
        parameters=[
            CONVERSATION_ID,
            doc.query("after", doc.INTEGER_GE0, "messages with a greater seq"),
            doc.query("before", doc.INTEGER_GE0, "messages with a smaller seq"),
            doc.query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": messages.MAX_HISTORY_LIMIT},
                f"default {messages.DEFAULT_HISTORY_LIMIT}",
            ),
        ],
        responses={
            200: doc.MessageList,
            400: doc.error(f"{BAD_ID}; `after`, `before` or `limit` out of range"),
            403: NOT_MEMBER,
        },
    )
    def get(self, request: Request, conversation_id: str) -> Response:
        data = messages.history(
            request.user.id,
            conversation_id,
            int_param(request, "before"),
            int_param(request, "after"),
            int_param(request, "limit", messages.DEFAULT_HISTORY_LIMIT),
        )
        return Response(data)

    @extend_schema(
        summary="Send a message",
        description="Stored and delivered live like a socket `send`; `id` is the "
        "idempotency key: a repeated one answers 200 with the stored message.",
        tags=["conversations"],
        parameters=[CONVERSATION_ID],
        request=doc.SendMessage,
        responses={
            200: doc.SentMessage,
            201: doc.SentMessage,
            400: doc.error(
                f"{BAD_ID}; `id` or `body` invalid; `too_large` (with `max_body_chars`)"
            ),
            403: NOT_MEMBER,
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        data = json_body(request)
        sent = sends.send(request.user, conversation_id, data.get("id"), data.get("body"))
        body = message_repr(sent.message)
        body["duplicate"] = sent.duplicate
        return Response(body, status=status.HTTP_200_OK if sent.duplicate else 201)
