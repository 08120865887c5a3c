"""The live connection registry: one Node per process, one LiveConnection per socket."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Node(models.Model):
    """A running daphne process; its heartbeat tells the reapers it is alive."""

    name = models.CharField(max_length=128, unique=True)
    host = models.CharField(max_length=255, blank=True, default="")
    pid = models.IntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(default=timezone.now, db_index=True)
    connection_count = models.IntegerField(default=0)
    # The node's own figures, refreshed with every heartbeat (GET /api/stats/).
    stats = models.JSONField(default=dict, blank=True)

    class Meta:
        # Operators' rights (docs/security.md, "Who may do what"); checked with
        # realtime/rest/permissions.py `holds`.
        permissions = [
            (
                "view_operations",
                "Can view operations: cluster figures, /ops/, staff topics, configuration",
            )
        ]

    def __str__(self) -> str:
        return self.name


class LiveConnection(models.Model):
    """An open socket, reachable from any node through `channel_name`."""

    id = models.CharField(max_length=40, primary_key=True)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="connections")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="live_connections"
    )
    endpoint = models.CharField(max_length=16)
    channel_name = models.CharField(max_length=200)
    remote_addr = models.CharField(max_length=64, blank=True, default="")
    user_agent = models.CharField(max_length=300, blank=True, default="")
    auth_method = models.CharField(max_length=16)
    auth_ref = models.CharField(max_length=80, db_index=True)
    connected_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    subscriptions = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "endpoint"])]
        # Records are never deleted by hand (their node removes them): closing the
        # socket is the right an operator is given.
        permissions = [("disconnect_liveconnection", "Can disconnect live connection")]

    def __str__(self) -> str:
        return self.id


class Topic(models.Model):
    """No table: topics live in the history store (realtime/topics/store.py). The model
    exists to carry the permission to publish, shown as "topic" in the Django admin."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("publish_topic", "Can publish to topics")]


class Presence(models.Model):
    """A user's announced status; its row lock makes online/offline exactly-once across nodes."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    online = models.BooleanField(default=False)
    changed_at = models.DateTimeField(default=timezone.now)


class Conversation(models.Model):
    """A group or direct conversation; `last_seq` numbers its messages without gaps."""

    GROUP = "group"
    DIRECT = "direct"
    KINDS = [(GROUP, "group"), (DIRECT, "direct")]

    id = models.CharField(max_length=24, primary_key=True)
    kind = models.CharField(max_length=8, choices=KINDS)
    title = models.CharField(max_length=200, blank=True, default="")
    # Null for a group the application's backend created (PROTOCOL 12).
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_seq = models.BigIntegerField(default=0)
    # "<smaller user id>:<larger user id>" for direct conversations: one per pair.
    direct_key = models.CharField(max_length=64, null=True, blank=True, unique=True)

    def __str__(self) -> str:
        return f"{self.id} ({self.title or self.kind})"


class Membership(models.Model):
    """A member of a conversation and how far they have read."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    read_seq = models.BigIntegerField(default=0)
    joined_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversation", "user"], name="one_membership")
        ]


class Message(models.Model):
    """A stored message. It exists once its row is committed (docs/architecture.md, rule 2)."""

    id = models.CharField(max_length=24, primary_key=True)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    seq = models.BigIntegerField()
    # Null for a system message, posted by the application's backend (PROTOCOL 12).
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    client_id = models.CharField(max_length=64)
    body = models.TextField()
    ts = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="one_seq"),
            models.UniqueConstraint(fields=["sender", "client_id"], name="idempotent_send"),
            # A system message has no sender: its key is unique in its conversation.
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=models.Q(sender__isnull=True),
                name="idempotent_system_send",
            ),
        ]
