"""The backend API (PROTOCOL 12): the application's backend acting on Tether with a
service token, each row behind its scope. The rules are the user-facing paths'
own (presence, control messages, publishing); only who may call differs. The
chat rows are in accounts/server_chat.py.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import connection_tokens, usernames
from accounts.models import User
from realtime.chat import presence
from realtime.node import control
from realtime.protocol import Close, Code, TetherError, bad_request, user_repr
from realtime.rest import openapi as doc
from realtime.rest.parsing import json_body
from realtime.rest.permissions import HasScope
from realtime.topics import service as topics
from realtime.topics.api import Published
from realtime.transport import signed

MAX_PRESENCE_QUERY = 500
MAX_PUBLICATIONS = 100


class ServerUser(serializers.Serializer):
    username = serializers.RegexField(
        r"^[\w.@+-]{1,150}$", required=False, help_text="free whatever its case"
    )
    is_active = serializers.BooleanField(
        required=False, help_text="false closes the user's sockets with 4403 and refuses new ones"
    )

    class Meta:
        ref_name = "ServerUser"


class ServerDisconnect(serializers.Serializer):
    code = serializers.ChoiceField(choices=[4401, 4403], required=False, help_text="default 4403")

    class Meta:
        ref_name = "ServerDisconnect"


class Closed(serializers.Serializer):
    closed = serializers.IntegerField(min_value=0, help_text="sockets asked to close")

    class Meta:
        ref_name = "Closed"


class ServerPresence(serializers.Serializer):
    presence = serializers.DictField(
        child=serializers.ChoiceField(choices=["online", "offline"]),
        help_text="by Tether user id; external ids that name no user are left out",
    )

    class Meta:
        ref_name = "ServerPresence"


class ServerPublication(serializers.Serializer):
    topic = serializers.CharField()
    data = serializers.JSONField()

    class Meta:
        ref_name = "ServerPublication"


class ServerPublish(serializers.Serializer):
    publications = ServerPublication(many=True, min_length=1, max_length=MAX_PUBLICATIONS)

    class Meta:
        ref_name = "ServerPublish"


class ServerPublished(serializers.Serializer):
    results = Published(many=True)

    class Meta:
        ref_name = "ServerPublished"


def needs(scope: str) -> Any:
    return doc.error(f"`forbidden`: the credential lacks the `{scope}` scope (staff too)")


EXTERNAL_ID = doc.path("external_id", {"type": "string"}, "the application's user id (1 to 150)")


def _external_id(value: Any, field: str) -> str:
    if not signed.valid_sub(value):
        raise bad_request(field, f"must be 1 to {signed.MAX_SUB_CHARS} characters")
    return value


def user_by_external_id(external_id: Any, field: str = "external_id") -> User:
    """The user of an external id (PROTOCOL 12), or `not_found` naming `field`."""
    user = User.objects.filter(external_id=_external_id(external_id, field)).first()
    if user is None:
        raise TetherError(Code.NOT_FOUND, f"{field}: no user with that external_id", field=field)
    return user


def _username(value: Any, user: User | None) -> str:
    if not isinstance(value, str):
        raise bad_request("username", "must be a string")
    try:
        return usernames.check(value, keep=user)
    except usernames.Refused as refused:
        raise bad_request("username", str(refused)) from None


class UserView(APIView):
    permission_classes = [HasScope.of("users")]

    @extend_schema(
        summary="Create or update the user of an external id",
        tags=["server"],
        parameters=[EXTERNAL_ID],
        request=ServerUser,
        responses={
            200: doc.UserBody,
            201: doc.UserBody,
            400: doc.error("a field invalid"),
            403: needs("users"),
        },
    )
    def put(self, request: Request, external_id: str) -> Response:
        data = json_body(request)
        active = data.get("is_active")
        if active is not None and not isinstance(active, bool):
            raise bad_request("is_active", "must be true or false")
        with transaction.atomic():
            wanted_id = _external_id(external_id, "external_id")
            user = User.objects.select_for_update().filter(external_id=wanted_id).first()
            created = user is None
            if created:
                name = data.get("username")
                wanted = _username(name, None) if name is not None else None
                user = connection_tokens.user_for(external_id, wanted)
            elif "username" in data:
                user.username = _username(data["username"], user)
            if active is not None:
                # A disabled account's sockets close with 4403 on every node
                # (accounts/signals.py) and new ones are refused.
                user.is_active = active
            try:
                user.save()
            except IntegrityError:
                raise bad_request("username", "this username is taken") from None
        return Response(user_repr(user), status=201 if created else 200)


class DisconnectView(APIView):
    permission_classes = [HasScope.of("connections")]

    @extend_schema(
        summary="Close every socket of a user, on every node",
        tags=["server"],
        parameters=[EXTERNAL_ID],
        request=ServerDisconnect,
        responses={
            200: Closed,
            400: doc.error("`code` not 4401 or 4403"),
            403: needs("connections"),
            404: doc.error("no user with that external_id"),
        },
    )
    def post(self, request: Request, external_id: str) -> Response:
        data = json_body(request) if request.data else {}
        code = data.get("code", Close.FORBIDDEN)
        if code not in (Close.UNAUTHENTICATED, Close.FORBIDDEN) or isinstance(code, bool):
            raise bad_request("code", "must be 4401 or 4403")
        user = user_by_external_id(external_id)
        return Response({"closed": control.close_connections_where(code, user_id=user.pk)})


def _ids(raw: str | None) -> list[str]:
    return [part for part in (raw or "").split(",") if part]


class PresenceView(APIView):
    permission_classes = [HasScope.of("presence")]

    @extend_schema(
        summary="Presence of users by id or external id",
        tags=["server"],
        parameters=[
            doc.query("users", {"type": "string"}, "Tether user ids, comma-separated"),
            doc.query("external_ids", {"type": "string"}, "external ids, comma-separated"),
        ],
        responses={
            200: ServerPresence,
            400: doc.error("more than 500 ids, or a bad one"),
            403: needs("presence"),
        },
    )
    def get(self, request: Request) -> Response:
        users = _ids(request.query_params.get("users"))
        external = _ids(request.query_params.get("external_ids"))
        if len(users) + len(external) > MAX_PRESENCE_QUERY:
            raise bad_request("users", f"at most {MAX_PRESENCE_QUERY} ids in all")
        try:
            ids = [int(u) for u in users]
        except ValueError:
            raise bad_request("users", "must be integer ids, comma-separated") from None
        if external:
            ids += list(User.objects.filter(external_id__in=external).values_list("pk", flat=True))
        return Response({"presence": presence.query(list(dict.fromkeys(ids)))})


class PublishView(APIView):
    permission_classes = [HasScope.of("publish")]

    @extend_schema(
        summary="Publish to several topics",
        tags=["server"],
        request=ServerPublish,
        responses={
            201: ServerPublished,
            400: doc.error("a publication invalid"),
            403: needs("publish"),
        },
    )
    def post(self, request: Request) -> Response:
        items = json_body(request).get("publications")
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_PUBLICATIONS:
            raise bad_request("publications", f"must be a list of 1 to {MAX_PUBLICATIONS}")
        # Every publication is checked before the first is stored: all or none invalid.
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "data" not in item:
                raise bad_request(f"publications[{i}]", "must be an object {topic, data}")
            topics.namespace_of(item.get("topic"), f"publications[{i}].topic")
            topics.encode_data(item["data"])
        results = [topics.publish(item["topic"], item["data"]) for item in items]
        return Response({"results": results}, status=status.HTTP_201_CREATED)
