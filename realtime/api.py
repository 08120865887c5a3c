"""REST for conversations, members and messages (PROTOCOL 9); the same services as the sockets."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime import conversations, messages
from realtime.models import Conversation
from realtime.protocol import bad_request
from realtime.representations import message_repr, user_repr

MAX_PAGE = 200


def _int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(name, "must be an integer") from None
    if value < 0:
        raise bad_request(name, "must be >= 0")
    return value


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise bad_request("body", "must be a JSON object")
    return request.data


class ConversationsView(APIView):
    def get(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 50) or 50
        if limit > MAX_PAGE:
            raise bad_request("limit", f"must be at most {MAX_PAGE}")
        offset = _int_param(request, "offset", 0) or 0
        items, has_more = conversations.list_conversations(request.user.id, limit, offset)
        return Response({"conversations": items, "has_more": has_more})

    def post(self, request: Request) -> Response:
        data = _body(request)
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
    def get(self, request: Request, conversation_id: str) -> Response:
        conversation, _ = conversations.access_conversation(request.user.id, conversation_id)
        return Response(conversations.represent(conversation, request.user.id))


class MembersView(APIView):
    def post(self, request: Request, conversation_id: str) -> Response:
        user, added = conversations.check_add_member(
            request.user, conversation_id, _body(request).get("user")
        )
        return Response(
            {"conversation": conversation_id, "user": user_repr(user)},
            status=status.HTTP_201_CREATED if added else status.HTTP_200_OK,
        )


class MemberDetailView(APIView):
    def delete(self, request: Request, conversation_id: str, user_id: int) -> Response:
        conversations.check_remove_member(request.user, conversation_id, user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessagesView(APIView):
    def get(self, request: Request, conversation_id: str) -> Response:
        data = messages.history(
            request.user.id,
            conversation_id,
            _int_param(request, "before"),
            _int_param(request, "after"),
            _int_param(request, "limit", messages.DEFAULT_HISTORY_LIMIT),
        )
        return Response(data)

    def post(self, request: Request, conversation_id: str) -> Response:
        data = _body(request)
        sent = messages.check_send(request.user, conversation_id, data.get("id"), data.get("body"))
        body = message_repr(sent.message)
        body["duplicate"] = sent.duplicate
        return Response(body, status=status.HTTP_200_OK if sent.duplicate else 201)
