"""`GET /api/admin/config/`: every setting from its one declaration (project/config.py)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from project.config import redacted
from realtime.node.admin_api import StaffView
from realtime.rest import openapi as doc
from realtime.rest.permissions import VIEW_OPERATIONS


class ConfigView(StaffView):
    right = VIEW_OPERATIONS

    @extend_schema(
        summary="The effective configuration",
        description="Every setting with its value and source; secrets redacted.",
        tags=["admin"],
        responses={200: doc.ConfigBody},
    )
    def get(self, request: Request) -> Response:
        return Response({"settings": redacted(settings.TETHER_CONFIG)})
