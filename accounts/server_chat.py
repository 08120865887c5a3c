"""The backend API's chat rows (PROTOCOL 12): conversations, members and messages
created by the application's backend with a `chat`-scoped service token.

The rules are chat's own (realtime/chat/conversations.py, realtime/chat/sends.py)
with the backend as the actor: it is no member, may act on any conversation,
names users by Tether id or `{"external_id": …}`, and may post system messages
(`sender: null`).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.server_api import needs, user_by_external_id
from realtime.chat import api as chat_api
from realtime.chat import conversations, sends
from realtime.chat.api import BAD_ID, CONVERSATION_ID
from realtime.chat.representations import conversation_repr
from realtime.models import Conversation
from realtime.protocol import Code, TetherError, bad_request, user_repr
from realtime.rest import openapi as doc
from realtime.rest.parsing import json_body
from realtime.rest.permissions import HasScope
from realtime.transport import signed

UNKNOWN = doc.error("`not_found`: no such conversation, or a user named is unknown or disabled")


USER_REF = {
    "oneOf": [
        {"type": "integer", "minimum": 1, "description": "a Tether user id"},
        {
            "type": "object",
            "properties": {
                "external_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": signed.MAX_SUB_CHARS,
                }
            },
            "required": ["external_id"],
            "additionalProperties": False,
        },
    ]
}


@extend_schema_field(USER_REF)
class UserRefField(serializers.JSONField):
    """A user reference: a Tether user id or `{"external_id": "…"}`."""


class ServerGroup(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["group"])
    title = doc.described(
        serializers.CharField(help_text="1 to 200 characters once trimmed (stored trimmed)"),
        {"type": "string", "pattern": doc.trimmed(200)},
    )
    members = serializers.ListField(
        child=UserRefField(),
        max_length=conversations.MAX_GROUP_MEMBERS,
        help_text="user references",
    )

    class Meta:
        ref_name = "ServerGroup"


class ServerDirect(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["direct"])
    members = doc.described(
        serializers.ListField(child=UserRefField(), help_text="exactly two user references"),
        {"type": "array", "items": USER_REF, "minItems": 2, "maxItems": 2, "uniqueItems": True},
    )

    class Meta:
        ref_name = "ServerDirect"


SERVER_CONVERSATION = PolymorphicProxySerializer(
    component_name="ServerConversation",
    serializers={"group": ServerGroup, "direct": ServerDirect},
    resource_type_field_name="kind",
)


class ServerMember(serializers.Serializer):
    user = UserRefField(help_text="a user reference")

    class Meta:
        ref_name = "ServerMember"


class ServerMessage(serializers.Serializer):
    id = serializers.CharField(
        min_length=1, max_length=64, help_text="the idempotency key, in the sender's key space"
    )
    body = doc.described(
        serializers.CharField(help_text="not blank; over MAX_BODY_CHARS is 400 `too_large`"),
        doc.MESSAGE_TEXT,
    )
    sender = UserRefField(
        allow_null=True, help_text="a member's reference, or null for a system message"
    )
    reply_to = doc.described(
        serializers.CharField(
            required=False, allow_null=True, help_text="the message_id of a message replied to"
        ),
        doc.REPLY_TO,
    )
    attachments = doc.described(
        serializers.ListField(
            child=serializers.CharField(),
            required=False,
            help_text="ids of attachments the sender uploaded to this conversation that no "
            "message holds (none for a system message)",
        ),
        doc.ATTACHMENT_IDS,
    )

    class Meta:
        ref_name = "ServerMessage"


def user_id(ref: Any, field: str) -> int:
    """The Tether id a user reference names (PROTOCOL 12); `not_found` for an unknown
    external id (a Tether id is checked where it is used, as on the user paths)."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref
    if isinstance(ref, dict) and set(ref) == {"external_id"}:
        return user_by_external_id(ref["external_id"], f"{field}.external_id").pk
    raise bad_request(field, 'must be a user id (an integer) or {"external_id": "…"}')


def _shown(conversation: Conversation) -> dict[str, Any]:
    """The conversation as the backend sees it: no read position, it is no member."""
    return conversation_repr(conversation, conversations.members_of(conversation.id), None)


class ConversationsView(APIView):
    permission_classes = [HasScope.of("chat")]

    @extend_schema(
        summary="Create a group, or find or create a direct conversation, as the backend",
        description="The backend is not a member: a group's `created_by` is null; a "
        "direct conversation names exactly two users (200 when it exists already).",
        tags=["server"],
        request=SERVER_CONVERSATION,
        responses={
            200: doc.BackendConversationBody,
            201: doc.BackendConversationBody,
            400: doc.error(
                "`bad_request` with `field`: `kind`, `title` or `members` invalid; a direct "
                "conversation whose two references name one user (an id and an external id)"
            ),
            403: needs("chat"),
            404: UNKNOWN,
        },
    )
    def post(self, request: Request) -> Response:
        data = json_body(request)
        refs = data.get("members")
        if not isinstance(refs, list):
            raise bad_request("members", "must be a list of user references")
        if len(refs) > conversations.MAX_GROUP_MEMBERS:
            raise bad_request("members", f"at most {conversations.MAX_GROUP_MEMBERS} members")
        ids = [user_id(ref, f"members[{i}]") for i, ref in enumerate(refs)]
        kind = data.get("kind")
        if kind == Conversation.GROUP:
            conversation = conversations.check_create_group(None, data.get("title"), ids)
            created = True
        elif kind == Conversation.DIRECT:
            conversation, created = conversations.check_create_direct_between(ids)
        else:
            raise bad_request("kind", 'must be "group" or "direct"')
        return Response(_shown(conversation), status=201 if created else 200)


class MembersView(APIView):
    permission_classes = [HasScope.of("chat")]

    @extend_schema(
        summary="Add a member to any group, as the backend",
        description="201 when added, 200 when already a member.",
        tags=["server"],
        parameters=[CONVERSATION_ID],
        request=ServerMember,
        responses={
            200: doc.MemberAdded,
            201: doc.MemberAdded,
            400: doc.error(f"{BAD_ID}; `user` not a reference; a direct conversation"),
            403: needs("chat"),
            404: UNKNOWN,
            409: doc.error("`limit_exceeded`: the group has 1000 members"),
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        ref = json_body(request).get("user")
        user, added = conversations.check_add_member(None, conversation_id, user_id(ref, "user"))
        return Response(
            {"conversation": conversation_id, "user": user_repr(user)},
            status=status.HTTP_201_CREATED if added else status.HTTP_200_OK,
        )


class MemberDetailView(APIView):
    permission_classes = [HasScope.of("chat")]

    @extend_schema(
        summary="Remove a member from any group, as the backend",
        tags=["server"],
        parameters=[CONVERSATION_ID, doc.path("user_id", doc.INTEGER_GE0, "the member's id")],
        responses={
            204: OpenApiResponse(description="removed"),
            400: doc.error(f"{BAD_ID}; a direct conversation"),
            403: needs("chat"),
            404: doc.error("`not_found`: no such conversation, or that user is not a member"),
        },
    )
    def delete(self, request: Request, conversation_id: str, user_id: int) -> Response:
        conversations.check_remove_member(None, conversation_id, user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessagesView(APIView):
    permission_classes = [HasScope.of("chat")]

    @extend_schema(
        summary="Post a message as a member, or a system message",
        description="With `sender` a member's reference, stored as that member's send "
        "(its idempotency key space); with `sender: null`, a system message (`sender` "
        "null in every representation; its keys are the conversation's). 201, or 200 "
        "with `duplicate: true` for a key already stored. Delivered live like any send.",
        tags=["server"],
        parameters=[CONVERSATION_ID],
        request=ServerMessage,
        responses={
            200: doc.SentMessage,
            201: doc.SentMessage,
            400: doc.error(
                f"{BAD_ID}; `id`, `body`, `sender`, `reply_to` or `attachments` invalid; "
                "`too_large`"
            ),
            403: doc.error("`forbidden`: the sender is not a member, or no `chat` scope"),
            404: UNKNOWN,
        },
    )
    def post(self, request: Request, conversation_id: str) -> Response:
        data = json_body(request)
        if "sender" not in data:
            raise bad_request("sender", "is required: a user reference, or null")
        sender = None
        if data["sender"] is not None:
            sender_id = user_id(data["sender"], "sender")
            sender = User.objects.filter(pk=sender_id, is_active=True).first()
            if sender is None:
                raise TetherError(Code.NOT_FOUND, "sender: no such active user", field="sender")
            conversations.conversation_for(None, conversation_id)  # 404 before 403
        # PROTOCOL 10's `reply_to` and `attachments` as a member's send takes them (a
        # system message has no uploader: it can hold no attachment).
        sent = sends.send(
            sender,
            conversation_id,
            data.get("id"),
            data.get("body"),
            data.get("reply_to"),
            data.get("attachments"),
        )
        return chat_api.stored_answer(sent)
