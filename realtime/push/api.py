"""Web Push REST (PROTOCOL 14): the VAPID key and the caller's subscriptions."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.push import endpoints, subscriptions, vapid
from realtime.rest import openapi as doc
from realtime.rest.parsing import json_body
from realtime.rest.throttles import UserQuota


class PushKeyBody(serializers.Serializer):
    public_key = serializers.CharField(
        help_text="the VAPID application server key (uncompressed P-256 point, base64url) for "
        "`pushManager.subscribe({applicationServerKey})`"
    )

    class Meta:
        ref_name = "PushKey"


class PushKeys(serializers.Serializer):
    p256dh = serializers.CharField(max_length=100, help_text="the browser's P-256 key, base64url")
    auth = serializers.CharField(max_length=40, help_text="16-byte secret, base64url")


class NewPushSubscription(serializers.Serializer):
    endpoint = serializers.CharField(
        min_length=1,
        max_length=endpoints.MAX_LENGTH,
        help_text="an https:// URL of a public host (or under `PUSH_ENDPOINT_ALLOWLIST`)",
    )
    keys = PushKeys()
    expirationTime = serializers.IntegerField(  # the browser's own name
        required=False, allow_null=True, help_text="ignored"
    )

    class Meta:
        ref_name = "NewPushSubscription"


class PushSubscribed(serializers.Serializer):
    endpoint = serializers.CharField()

    class Meta:
        ref_name = "PushSubscribed"


class PushEndpoint(serializers.Serializer):
    endpoint = serializers.CharField(min_length=1, max_length=endpoints.MAX_LENGTH)

    class Meta:
        ref_name = "PushEndpoint"


class PushKeyView(APIView):
    @extend_schema(
        summary="The VAPID public key",
        tags=["push"],
        responses={200: PushKeyBody},
    )
    def get(self, request: Request) -> Response:
        return Response({"public_key": vapid.public_key()})


class PushSubscriptionsView(APIView):
    throttle_classes = [UserQuota.of("push_subscriptions", "POST", "DELETE")]

    @extend_schema(
        summary="Register a push subscription",
        description="The browser's `PushSubscription.toJSON()`. 201 when new, 200 when the "
        "caller had it already (its keys are updated).",
        tags=["push"],
        request=NewPushSubscription,
        responses={
            200: PushSubscribed,
            201: PushSubscribed,
            400: doc.error(
                "`bad_request`: `endpoint` not allowed (not https://, a private or local "
                "address, a host that does not resolve) or `keys` invalid"
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = json_body(request)
        created = subscriptions.subscribe(request.user, data)
        return Response(
            {"endpoint": data["endpoint"]},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        summary="Remove a push subscription",
        description="Only the caller's own; 204 whether or not it was registered.",
        tags=["push"],
        request=PushEndpoint,
        responses={
            204: OpenApiResponse(description="removed"),
            400: doc.error("`bad_request`: `endpoint` missing"),
        },
    )
    def delete(self, request: Request) -> Response:
        subscriptions.unsubscribe(request.user, json_body(request).get("endpoint"))
        return Response(status=status.HTTP_204_NO_CONTENT)
