"""Users, long-lived API tokens and single-use WebSocket tickets."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.db import models
from django.db.models.functions import Lower


class UserManager(DjangoUserManager):
    def get_by_natural_key(self, username: str | None) -> User:
        """Log-in by name whatever its case: names are unique that way (the index)."""
        return self.get(username__iexact=username)


class User(AbstractUser):
    """Tether's user; a custom model so later fields need no migration dance."""

    # The application's own user id (a connection token's `sub`, PROTOCOL 11) for a
    # user who came in that way; null for users with a Tether password.
    external_id = models.CharField(max_length=150, unique=True, null=True, blank=True, default=None)

    objects = UserManager()

    class Meta(AbstractUser.Meta):
        # Names are unique whatever their case, in the database itself: a check
        # before the insert alone let two sign-ups racing on two nodes both pass.
        constraints = [
            models.UniqueConstraint(Lower("username"), name="accounts_user_username_ci_unique")
        ]


# What a service token may do on the backend API (PROTOCOL 12); `publish` also
# covers `POST /api/topics/<topic>/publish/`.
SCOPES = ("publish", "chat", "users", "presence", "connections")


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored, so a dump reveals no usable token."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=12, help_text="first characters, to recognise a token")
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="comma-separated: " + ", ".join(SCOPES) + " (PROTOCOL 12)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # After this the token no longer authenticates and its sockets close with 4401;
    # null: it never expires (docs/security.md).
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def scope_set(self) -> frozenset[str]:
        """The token's scopes (what `realtime/rest/permissions.py` asks a credential)."""
        return frozenset(s for s in self.scopes.split(",") if s)


class WsTicket(models.Model):
    """A single-use, 60-second credential for `?ticket=` on the socket URL."""

    key_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # The credential that obtained the ticket ("session:<hash>", "token:<id>" or
    # "jwt:<user id>"), so logging out also closes sockets opened with its tickets.
    auth_ref = models.CharField(max_length=80)
    # When that credential expires (a connection token's `exp`): the socket closes then.
    credential_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "WebSocket ticket"
