"""Read-only, live views of the registry for operators."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone

from realtime.models import LiveConnection, Node


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(LiveConnection)
class LiveConnectionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user",
        "node",
        "endpoint",
        "remote_addr",
        "auth_method",
        "connected_at",
        "idle",
    )
    list_filter = ("node", "endpoint", "auth_method")
    search_fields = ("id", "user__username", "remote_addr")
    list_select_related = ("user", "node")
    ordering = ("-connected_at",)

    @admin.display(description="idle", ordering="last_seen")
    def idle(self, obj: LiveConnection) -> str:
        return _ago(timezone.now() - obj.last_seen)


@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "host",
        "pid",
        "started_at",
        "last_heartbeat",
        "silent_for",
        "connection_count",
    )
    ordering = ("name",)

    @admin.display(description="silent for", ordering="last_heartbeat")
    def silent_for(self, obj: Node) -> str:
        return _ago(timezone.now() - obj.last_heartbeat)
