from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from accounts.models import ApiToken, User


class ApiTokenInline(admin.TabularInline):
    model = ApiToken
    extra = 0
    fields = ("prefix", "name", "can_publish", "created_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")


@admin.register(User)
class TetherUserAdmin(UserAdmin):
    inlines = [ApiTokenInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "can_publish", "created_at", "last_used_at")
    list_filter = ("can_publish",)
    search_fields = ("user__username", "name", "prefix")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request: object) -> bool:
        # Raw tokens are shown once at creation: issue them with `manage.py issue_token`.
        return False
