"""The operators' admin: live connections and nodes, conversations, topic namespaces,
webhook events.

The registry and the message tables are written by the nodes and the chat
service only; the admin reads them, and acts through the same services the
staff API uses (a kick closes the socket on whichever node holds it).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from realtime.chat import sends
from realtime.hooks import queue
from realtime.models import (
    Attachment,
    Conversation,
    LiveConnection,
    Membership,
    Message,
    Node,
    OutboxEvent,
    PushSubscription,
)
from realtime.node import control
from realtime.node.registry import is_alive, silent_after
from realtime.protocol import TetherError
from realtime.rest.permissions import DISCONNECT, holds
from realtime.topics.service import namespaces

# How many choices a "who" filter offers besides the selected one: the list of
# users or conversations is unbounded, so the filter shows the busiest few and
# any other is reached by search or by the links in the rows.
TOP_CHOICES = 10

ACCESS_RULES = {
    "open": "any signed-in user",
    "own": "user:<id> only for that user",
    "staff": "staff with “Can view operations”",
}


def ago(delta: timedelta) -> str:
    """A duration as operators read it: 45s, 12m, 3h."""
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the nodes: an edit or delete here would contradict a live process."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class UserFilter(admin.SimpleListFilter):
    """By user, for any number of users: the selected one and those with most sockets."""

    title = "user"
    parameter_name = "user"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        top = (
            LiveConnection.objects.values("user_id", "user__username")
            .annotate(n=Count("id"))
            .order_by("-n", "user__username")[:TOP_CHOICES]
        )
        choices = [(str(row["user_id"]), f"{row['user__username']} ({row['n']})") for row in top]
        selected = self.value()
        if selected and selected.isdigit() and selected not in dict(choices):
            user = get_user_model().objects.filter(pk=selected).first()
            if user is not None:
                choices.insert(0, (selected, user.get_username()))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(user_id=value) if value.isdigit() else queryset.none()


@admin.register(LiveConnection)
class LiveConnectionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "user_link",
        "node",
        "endpoint",
        "remote_addr",
        "auth_method",
        "connected_at",
        "idle",
    )
    list_filter = ("node", "endpoint", "auth_method", UserFilter)
    search_fields = ("id", "user__username", "remote_addr")
    list_select_related = ("user", "node")
    ordering = ("-connected_at",)
    actions = ["disconnect_selected"]

    @admin.display(description="idle", ordering="last_seen")
    def idle(self, obj: LiveConnection) -> str:
        return ago(timezone.now() - obj.last_seen)

    @admin.display(description="user", ordering="user__username")
    def user_link(self, obj: LiveConnection) -> str:
        # Filters the list to this user: the way to the filter when there are many users.
        return format_html('<a href="?user={}">{}</a>', obj.user_id, obj.user.get_username())

    def has_disconnect_permission(self, request: HttpRequest) -> bool:
        # The right the REST kick asks too (DELETE /api/admin/connections/<id>/).
        return holds(request.user, DISCONNECT)

    @admin.action(description="Disconnect selected (close 4403)", permissions=["disconnect"])
    def disconnect_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.values_list("id", flat=True))
        asked = control.disconnect(ids)
        self.message_user(
            request,
            f"Asked {asked} connection(s) to close with 4403; "
            "each disappears from this list once its node has closed it.",
            messages.SUCCESS,
        )


class NodeStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("alive", "alive"), ("silent", "silent")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        cutoff = timezone.now() - silent_after()
        if self.value() == "alive":
            return queryset.filter(last_heartbeat__gte=cutoff)
        if self.value() == "silent":
            return queryset.filter(last_heartbeat__lt=cutoff)
        return queryset


@admin.register(Node)
class NodeAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "alive",
        "live_connections",
        "reported",
        "silent_for",
        "last_heartbeat",
        "host",
        "pid",
        "started_at",
    )
    list_filter = (NodeStatusFilter,)
    ordering = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The records are the truth across nodes; `connection_count` is what the node
        # last reported about itself, so both are shown.
        return super().get_queryset(request).annotate(live=Count("connections"))

    @admin.display(description="alive", boolean=True, ordering="last_heartbeat")
    def alive(self, obj: Node) -> bool:
        return is_alive(obj.last_heartbeat)

    @admin.display(description="silent for", ordering="last_heartbeat")
    def silent_for(self, obj: Node) -> str:
        return ago(timezone.now() - obj.last_heartbeat)

    @admin.display(description="live connections", ordering="live")
    def live_connections(self, obj: Node) -> Any:
        url = reverse("admin:realtime_liveconnection_changelist") + f"?node__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, obj.live)

    @admin.display(description="reported by the node", ordering="connection_count")
    def reported(self, obj: Node) -> int:
        return obj.connection_count

    def get_urls(self) -> list[URLPattern]:
        # The namespaces come from a setting, not a table: a plain admin view, hosted
        # here because a ModelAdmin is how an app adds pages to the default admin site.
        view = self.admin_site.admin_view(self.namespaces_view)
        return [
            path("namespaces/", view, name="realtime_node_namespaces"),
            *super().get_urls(),
        ]

    def namespaces_view(self, request: HttpRequest) -> HttpResponse:
        """The configured topic namespaces (`TOPIC_NAMESPACES`), read-only."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = [
            {
                "name": ns.name,
                "history_size": ns.history_size,
                "history_ttl": ns.history_ttl,
                "history_ttl_human": ago(timedelta(seconds=ns.history_ttl)),
                "access": ns.access,
                "access_rule": ACCESS_RULES.get(ns.access, ns.access),
            }
            for ns in sorted(namespaces().values(), key=lambda ns: ns.name)
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Topic namespaces",
            "opts": self.model._meta,
            "namespaces": rows,
        }
        return TemplateResponse(request, "admin/realtime/topic_namespaces.html", context)


class ConversationFilter(admin.SimpleListFilter):
    """By conversation, for any number of them: the selected one and the busiest few."""

    title = "conversation"
    parameter_name = "conversation"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        top = Conversation.objects.order_by("-last_seq", "id")[:TOP_CHOICES]
        choices = [(c.pk, str(c)) for c in top]
        selected = self.value()
        if selected and selected not in dict(choices):
            conversation = Conversation.objects.filter(pk=selected).first()
            if conversation is not None:
                choices.insert(0, (conversation.pk, str(conversation)))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(conversation_id=value) if value else queryset


class MembershipInline(admin.TabularInline):
    """Members join and leave through the chat service, which tells their sockets."""

    model = Membership
    extra = 0
    fields = ("user", "read_seq", "joined_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "title", "created_by", "created_at", "members", "messages_link")
    list_filter = ("kind",)
    search_fields = ("id", "title", "memberships__user__username")
    list_select_related = ("created_by",)
    ordering = ("-created_at",)
    # Only the title may change: ids, kind, the direct pair and the message counter
    # are invariants the chat service relies on.
    fields = ("id", "kind", "title", "created_by", "created_at", "last_seq", "direct_key")
    readonly_fields = ("id", "kind", "created_by", "created_at", "last_seq", "direct_key")
    inlines = [MembershipInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Members' sockets would not be told; conversations end through the API.
        return False

    @admin.display(description="members", ordering="member_count")
    def members(self, obj: Conversation) -> int:
        return obj.member_count

    @admin.display(description="messages", ordering="last_seq")
    def messages_link(self, obj: Conversation) -> str:
        url = reverse("admin:realtime_message_changelist")
        return format_html('<a href="{}?conversation={}">{}</a>', url, obj.pk, obj.last_seq)


class EventInline(admin.TabularInline):
    """A message's events (PROTOCOL 10): its edits, deletion and reactions, in seq order."""

    model = Message
    fk_name = "target"
    extra = 0
    fields = ("seq", "kind", "sender", "body", "emoji", "reaction_on", "ts", "id")
    readonly_fields = fields
    ordering = ("seq",)
    can_delete = False
    verbose_name = "event"
    verbose_name_plural = "events (edits, deletion, reactions)"

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class AttachmentInline(admin.TabularInline):
    """The files a message holds (none once it is deleted: they are removed with it)."""

    model = Attachment
    fk_name = "message"
    extra = 0
    fields = ("id", "name", "size", "content_type", "uploader", "created_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    """Messages are numbered without gaps per conversation: none is edited here. *Delete
    messages* deletes through the chat service's own path, as a user's `delete` does
    (an event every member's socket hears; body, edits' bodies, attachments removed),
    with the operator as staff."""

    list_display = ("conversation", "seq", "kind", "sender", "excerpt", "deleted", "sent_at", "id")
    list_filter = ("conversation__kind", "kind", "deleted", ConversationFilter)
    search_fields = ("body", "sender__username", "=id", "=conversation__id")
    list_select_related = ("conversation", "sender")
    ordering = ("conversation", "seq")
    # Counting every message on each page view would scan the table.
    show_full_result_count = False
    inlines = [EventInline, AttachmentInline]
    actions = ["delete_messages"]

    def has_delete_messages_permission(self, request: HttpRequest) -> bool:
        return request.user.is_staff and request.user.has_perm("realtime.delete_message")

    @admin.action(
        description="Delete messages (as their sender would)", permissions=["delete_messages"]
    )
    def delete_messages(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = refused = 0
        for message in queryset.filter(kind=Message.MESSAGE).order_by("conversation_id", "seq"):
            key = "admin-" + secrets.token_hex(8)
            try:
                sends.store(
                    sends.delete_request(
                        request.user, message.conversation_id, key, message.id, staff=True
                    )
                )
                done += 1
            except TetherError:
                refused += 1
        self.message_user(
            request,
            f"{done} message(s) deleted (events sent to every member's sockets); "
            f"{refused} refused. Edits, deletions and reactions are not deleted themselves.",
            messages.SUCCESS if not refused else messages.WARNING,
        )

    @admin.display(description="body")
    def excerpt(self, obj: Message) -> str:
        return obj.body if len(obj.body) <= 80 else obj.body[:79] + "…"

    @admin.display(description="sent", ordering="ts")
    def sent_at(self, obj: Message) -> Any:
        return datetime.fromtimestamp(obj.ts / 1000, tz=timezone.get_current_timezone())


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    """Webhook events (PROTOCOL 13) and Web Push rows (PROTOCOL 14, type `push.message`):
    what waits, what failed and the receiver's last answer. Written by the chat
    service and worked by the nodes; *retry* puts chosen events back in the queue."""

    list_display = (
        "event_id",
        "type",
        "order_key",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "queued_at",
        "next_attempt_at",
    )
    list_filter = ("state", "type")
    search_fields = ("=event_id", "=order_key")
    ordering = ("-id",)
    fields = (*list_display, "ts", "finished_at", "data")
    readonly_fields = fields
    actions = ["retry_selected"]
    show_full_result_count = False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("realtime.change_outboxevent")

    @admin.action(description="Retry selected (send again now)", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        again = queue.retry(list(queryset.values_list("id", flat=True)))
        self.message_user(
            request,
            f"{again} event(s) put back in the queue; pending ones were left as they are.",
            messages.SUCCESS,
        )


@admin.register(PushSubscription)
class PushSubscriptionAdmin(admin.ModelAdmin):
    """Browsers' Web Push subscriptions (PROTOCOL 14). Deleting one stops its pushes
    (the browser keeps showing notifications on until its user turns them off and on);
    they are written only by their users' browsers."""

    list_display = ("id", "user", "endpoint", "created_at")
    search_fields = ("user__username", "=user__id")
    list_select_related = ("user",)
    ordering = ("-id",)
    fields = ("user", "endpoint", "created_at")
    readonly_fields = fields
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
