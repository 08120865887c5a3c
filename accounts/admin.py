"""Users with their live sockets and API tokens.

Deleting a token here (from the user's page, its own page or the bulk action)
revokes it: `accounts.signals` closes that token's sockets with 4401, since
every one of those paths deletes through the ORM and sends `post_delete`.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import SCOPES, ApiToken, User
from realtime.admin import ago
from realtime.models import LiveConnection


class ApiTokenInline(admin.TabularInline):
    model = ApiToken
    extra = 0
    fields = ("prefix", "name", "scopes", "created_at", "last_used_at", "expires_at")
    readonly_fields = ("prefix", "scopes", "created_at", "last_used_at", "expires_at")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Raw tokens are shown once at creation: issue them with `manage.py issue_token`.
        return False


class LiveConnectionInline(admin.TabularInline):
    """The user's open sockets on every node; closing them is the live list's action."""

    model = LiveConnection
    extra = 0
    # The connection id is the row's title (with a link to its page).
    fields = ("node", "endpoint", "auth_method", "remote_addr", "connected_at", "idle")
    readonly_fields = fields
    can_delete = False
    show_change_link = True
    verbose_name_plural = "live connections"

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="idle")
    def idle(self, obj: LiveConnection) -> str:
        return ago(timezone.now() - obj.last_seen)


@admin.register(User)
class TetherUserAdmin(UserAdmin):
    inlines = [LiveConnectionInline, ApiTokenInline]
    list_display = (*UserAdmin.list_display, "external_id")
    search_fields = (*UserAdmin.search_fields, "external_id")
    # The application's user id (PROTOCOL 11): set when the user first came in with
    # a connection token, and what later tokens are matched on.
    readonly_fields = ("external_id",)
    fieldsets = (
        *UserAdmin.fieldsets,
        ("From the application's backend", {"fields": ("external_id",)}),
    )


class ApiTokenForm(forms.ModelForm):
    """Scopes as checkboxes; stored as the model's comma-separated text."""

    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="rights on the backend API (PROTOCOL 12); `publish` also covers topic REST",
    )

    class Meta:
        model = ApiToken
        fields = ("name", "scopes")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["scopes"] = sorted(self.instance.scope_set)

    def clean_scopes(self) -> str:
        return ",".join(sorted(self.cleaned_data["scopes"]))


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ("prefix", "user", "name", "scopes", "created_at", "last_used_at", "expires_at")
    list_filter = ("scopes",)
    search_fields = ("user__username", "name", "prefix")
    list_select_related = ("user",)
    # A token handed to another user would keep its sockets under the old one.
    readonly_fields = ("user", "prefix", "key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Raw tokens are shown once at creation: issue them with `manage.py issue_token`.
        return False
