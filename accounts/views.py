"""REST auth endpoints (PROTOCOL 9): register, token, ws-ticket, me."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.db import IntegrityError, transaction
from django.db.models import Q
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import connection_tokens, credentials
from accounts.backends import refused_for
from accounts.models import ApiToken, User
from accounts.serializers import (
    CredentialsSerializer,
    RegisterSerializer,
)
from accounts.throttles import AuthAddressThrottle
from accounts.usernames import USERNAME_TAKEN
from realtime.protocol import user_repr
from realtime.rest import openapi as doc
from realtime.rest.errors import error_response
from realtime.rest.throttles import UserQuota
from realtime.transport import signed


def auth_ref_of(request: Request) -> str:
    """The credential a request rests on, as the socket registry names it."""
    if isinstance(request.auth, ApiToken):
        return credentials.token_ref(request.auth.pk)
    if isinstance(request.auth, signed.Claims):
        return connection_tokens.jwt_ref(request.user.pk)
    session_key = request._request.session.session_key or ""
    return credentials.session_ref(session_key)


def _credential_end(request: Request) -> datetime | None:
    """When the credential of a request ends: a ticket it mints, and the socket opened
    with that ticket, end with it."""
    if isinstance(request.auth, signed.Claims):
        return datetime.fromtimestamp(request.auth.exp, tz=UTC)
    if isinstance(request.auth, ApiToken):
        return request.auth.expires_at
    return credentials.session_ends(request._request.session.session_key or "")


class RegisterView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    throttle_classes = [AuthAddressThrottle]

    @extend_schema(
        summary="Sign up",
        tags=["auth"],
        request=RegisterSerializer,
        responses={
            201: doc.UserBody,
            400: doc.error(
                "`bad_request`: a field missing or invalid, the username taken, "
                "or the password refused by the validators"
            ),
            403: doc.error("`forbidden`: sign-up is disabled (`SIGNUP_ENABLED`)"),
        },
    )
    def post(self, request: Request) -> Response:
        if not settings.SIGNUP_ENABLED:
            return error_response("forbidden", "sign-up is disabled on this server", 403)
        serializer = RegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                user = User.objects.create_user(
                    username=serializer.validated_data["username"],
                    password=serializer.validated_data["password"],
                )
        except IntegrityError:  # the same name, in any case, signed up meanwhile
            return error_response(
                "bad_request", f"username: {USERNAME_TAKEN}", 400, field="username"
            )
        return Response(user_repr(user), status=status.HTTP_201_CREATED)


class TokenView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        summary="Get a new API token",
        tags=["auth"],
        request=CredentialsSerializer,
        responses={
            200: doc.TokenBody,
            400: doc.error("`bad_request`: `username` or `password` missing or invalid"),
            401: doc.error(
                "`invalid_credentials`: wrong username or password, or a disabled account"
            ),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = CredentialsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request._request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None:
            wait = refused_for(request._request)
            if wait is not None:
                response = error_response(
                    "rate_limited", "too many attempts", 429, retry_after=wait * 1000
                )
                response["Retry-After"] = str(wait)
                return response
            return error_response("invalid_credentials", "wrong username or password", 401)
        ttl = settings.API_TOKEN_TTL
        _, raw = credentials.issue_token(
            user,
            name="POST /api/auth/token/",
            expires_in=timedelta(days=ttl) if ttl else None,
        )
        return Response({"token": raw}, status=status.HTTP_200_OK)


class WsTicketView(APIView):
    @extend_schema(
        summary="Get a socket ticket",
        description="Single use, valid for `expires_in` seconds; no request body.",
        tags=["auth"],
        request=None,
        responses={201: doc.TicketBody},
    )
    def post(self, request: Request) -> Response:
        # A ticket minted with a connection token ends with it (PROTOCOL 11).
        raw = credentials.issue_ticket(
            request.user, auth_ref_of(request), ends=_credential_end(request)
        )
        return Response(
            {"ticket": raw, "expires_in": credentials.TICKET_SECONDS},
            status=status.HTTP_201_CREATED,
        )


class TokenInfo(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField(allow_blank=True)
    prefix = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.IntegerField(help_text="ms since the epoch")
    last_used_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True, help_text="null: never")

    class Meta:
        ref_name = "TokenInfo"


class TokenList(serializers.Serializer):
    tokens = TokenInfo(many=True)

    class Meta:
        ref_name = "TokenList"


def _token_repr(token: ApiToken) -> dict[str, Any]:
    """A token as its owner sees it: never its value, which is not kept."""
    return {
        "id": token.pk,
        "name": token.name,
        "prefix": token.prefix,
        "scopes": sorted(token.scope_set),
        "created_at": credentials.ms(token.created_at),
        "last_used_at": credentials.ms(token.last_used_at),
        "expires_at": credentials.ms(token.expires_at),
    }


class TokensView(APIView):
    @extend_schema(
        summary="The caller's API tokens",
        tags=["auth"],
        responses={200: TokenList},
    )
    def get(self, request: Request) -> Response:
        tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at")
        return Response({"tokens": [_token_repr(t) for t in tokens]})


class TokenDetailView(APIView):
    @extend_schema(
        summary="Revoke one of the caller's API tokens",
        description="Its sockets close with 4401 and the tickets it minted are void.",
        tags=["auth"],
        parameters=[doc.path("token_id", {"type": "integer"}, "the token's id")],
        responses={204: None, 404: doc.error("`not_found`: no such token of the caller's")},
    )
    def delete(self, request: Request, token_id: int) -> Response:
        deleted, _ = ApiToken.objects.filter(pk=token_id, user=request.user).delete()
        if not deleted:
            return error_response("not_found", "no such token", 404)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    @extend_schema(summary="The caller", tags=["users"], responses={200: doc.UserBody})
    def get(self, request: Request) -> Response:
        return Response(user_repr(request.user))


class UserLookupView(APIView):
    """`GET /api/users/?username=bob,carol`: exact (case-insensitive) names to users.

    Any signed-in user may ask, so that people can start conversations by name;
    only exact names are answered (no listing or prefix search of accounts), and
    at most `QUOTA_USER_LOOKUPS` a user (no enumeration by brute force).
    """

    throttle_classes = [UserQuota.of("user_lookups", "GET")]

    MAX_NAMES = 50

    @extend_schema(
        summary="Look users up by exact name",
        tags=["users"],
        parameters=[
            doc.query(
                "username",
                {"type": "string"},
                "comma-separated names, 1 to 50, matched exactly regardless of case",
                required=True,
            )
        ],
        responses={
            200: doc.UserList,
            400: doc.error("`bad_request`: `username` missing or more than 50 names"),
        },
    )
    def get(self, request: Request) -> Response:
        raw = request.query_params.get("username", "")
        names = list(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
        if not names:
            return error_response("bad_request", "username: is required", 400, field="username")
        if len(names) > self.MAX_NAMES:
            return error_response(
                "bad_request", f"username: at most {self.MAX_NAMES} names", 400, field="username"
            )
        match = Q()
        for name in names:
            match |= Q(username__iexact=name)
        users = User.objects.filter(match, is_active=True).order_by("id")
        return Response({"users": [user_repr(u) for u in users], "has_more": False})
