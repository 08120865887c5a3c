"""REST for conversations, members and messages (PROTOCOL 9); the same services as the sockets."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.chat import conversations, messages, sends
from realtime.models import Conversation
from realtime.protocol import bad_request, user_repr
from realtime.rest import openapi as doc
from realtime.rest.parsing import int_param, json_body
from realtime.rest.throttles import UserQuota

MAX_PAGE = 200

CONVERSATION_ID = doc.path("conversation_id", doc.ID, "the conversation's id")
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
            400: doc.error(
                "`bad_request` with `field`: `kind`, `title` or `members` invalid; a direct "
                "conversation naming the caller (which only the caller's id can tell)"
            ),
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


def stored_answer(sent: messages.Sent, created: int = status.HTTP_201_CREATED) -> Response:
    """A stored event as REST answers it: as read now, with `duplicate` (200 when so)."""
    body = messages.current(sent.message.id)
    body["duplicate"] = sent.duplicate
    return Response(body, status=status.HTTP_200_OK if sent.duplicate else created)


MESSAGE_ID = doc.path("message_id", doc.ID, 'the `message_id` of a `kind: "message"` event')
NO_TARGET = doc.error(
    "`not_found` (with `field`: `message_id`): no such message in that conversation"
)


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
                f"{BAD_ID}; `id` or `body` invalid; `too_large` (with `max_body_chars`); "
                "`reply_to` naming no message of that conversation; `attachments` naming "
                "one the caller did not upload there or that a message holds"
            ),
            403: NOT_MEMBER,
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        data = json_body(request)
        sent = sends.send(
            request.user,
            conversation_id,
            data.get("id"),
            data.get("body"),
            data.get("reply_to"),
            data.get("attachments"),
        )
        return stored_answer(sent)


class MessageDetailView(APIView):
    """PROTOCOL 10: edit and delete a message, as the socket's `edit` and `delete`."""

    throttle_classes = [UserQuota.of("messages", "PATCH", "DELETE")]

    @extend_schema(
        summary="Edit a message",
        description="Only its sender; not a deleted message (400 naming `message_id`). "
        "Answers the stored `edit` event; `id` is the idempotency key, shared with sends.",
        tags=["conversations"],
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        request=doc.EditMessage,
        responses={
            200: doc.SentMessage,
            400: doc.error(
                f"{BAD_ID}; `id`, `message_id` or `body` invalid; `too_large`; "
                "a deleted message (`message_id`)"
            ),
            403: doc.error("`forbidden`: not a member, or not the message's sender"),
            404: NO_TARGET,
        },
    )
    def patch(self, request: Request, conversation_id: str, message_id: str) -> Response:
        data = json_body(request)
        edit = sends.edit_request(
            request.user, conversation_id, data.get("id"), message_id, data.get("body")
        )
        return stored_answer(sends.store(edit), status.HTTP_200_OK)

    @extend_schema(
        summary="Delete a message",
        description="By its sender, the conversation's creator or staff. Its body, its "
        "edits' bodies and its attachments are removed; a message deleted already "
        "answers its first `delete` event (`duplicate: true`).",
        tags=["conversations"],
        parameters=[
            CONVERSATION_ID,
            MESSAGE_ID,
            doc.query("id", doc.ID, "the idempotency key", required=True),
        ],
        responses={
            200: doc.SentMessage,
            400: doc.error(f"{BAD_ID}; `id` or `message_id` invalid"),
            403: doc.error(
                "`forbidden`: not a member, or neither the sender, the creator nor staff"
            ),
            404: NO_TARGET,
        },
    )
    def delete(self, request: Request, conversation_id: str, message_id: str) -> Response:
        deletion = sends.delete_request(
            request.user, conversation_id, request.query_params.get("id"), message_id
        )
        return stored_answer(sends.store(deletion), status.HTTP_200_OK)


class ReactionsView(APIView):
    throttle_classes = [UserQuota.of("messages", "POST")]

    @extend_schema(
        summary="React to a message",
        description="Any member; `on` true adds the caller's reaction, false removes it. "
        "Every accepted reaction is an event, even one that changes nothing.",
        tags=["conversations"],
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        request=doc.React,
        responses={
            200: doc.SentMessage,
            201: doc.SentMessage,
            400: doc.error(f"{BAD_ID}; `id`, `message_id`, `emoji` or `on` invalid"),
            403: NOT_MEMBER,
            404: NO_TARGET,
        },
    )
    def post(self, request: Request, conversation_id: str, message_id: str) -> Response:
        data = json_body(request)
        reaction = sends.react_request(
            request.user,
            conversation_id,
            data.get("id"),
            message_id,
            data.get("emoji"),
            data.get("on"),
        )
        return stored_answer(sends.store(reaction))
