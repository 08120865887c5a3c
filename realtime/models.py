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
    # PROTOCOL 10: every row is an event in the seq stream. `kind` says which; an
    # edit, delete or reaction names the `kind: "message"` event it acts on.
    MESSAGE = "message"
    EDIT = "edit"
    DELETE = "delete"
    REACTION = "reaction"
    KINDS = [(MESSAGE, "message"), (EDIT, "edit"), (DELETE, "delete"), (REACTION, "reaction")]
    kind = models.CharField(max_length=8, choices=KINDS, default=MESSAGE, db_default=MESSAGE)
    # Indexed only where set (Meta.indexes): a new message, the hot insert, then
    # maintains no index for either (docs/benchmarks.md, PROTOCOL 10).
    target = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="events",
        db_index=False,
    )
    reply_to = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    # Defaults in the database too: the send path inserts with its own SQL
    # (chat/sends.py) and names only the columns a new message sets.
    # A message event's current state, kept on its own row in the transaction of the
    # event that changes it, so a replay reads it with the row (docs/protocol.md).
    edited_at = models.BigIntegerField(null=True, blank=True)
    deleted = models.BooleanField(default=False, db_default=False)
    # {emoji: [user ids, in the order they reacted]}
    reactions = models.JSONField(default=dict, db_default={}, blank=True)
    # A reaction event's own fields.
    emoji = models.CharField(max_length=64, blank=True, default="", db_default="")
    reaction_on = models.BooleanField(null=True, blank=True)

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
        indexes = [
            models.Index(
                fields=["target"],
                name="message_event_target",
                condition=models.Q(target__isnull=False),
            ),
            models.Index(
                fields=["reply_to"],
                name="message_reply_to",
                condition=models.Q(reply_to__isnull=False),
            ),
        ]


class Attachment(models.Model):
    """An uploaded file (PROTOCOL 10), stored through Django's storage API. It belongs to
    its conversation and uploader until a message holds it; one nobody holds a day
    after its upload is removed by the node maintenance."""

    id = models.CharField(max_length=24, primary_key=True)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="attachments"
    )
    uploader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, null=True, blank=True, related_name="attachments"
    )
    # The storage's name for the bytes: random, never the client's file name.
    file = models.FileField(upload_to="attachments/%Y/%m/%d/", max_length=255)
    name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    # Sniffed from the bytes when uploaded, not taken from the client.
    content_type = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"],
                name="attachment_unheld",
                condition=models.Q(message__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.name}"


class OutboxEvent(models.Model):
    """An event for the application's backend (PROTOCOL 13), written in the same
    transaction as the change it tells of and delivered by any node (realtime/hooks/)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    # Finished undelivered because its target is gone (a push subscription removed).
    DROPPED = "dropped"
    STATES = [
        (PENDING, "pending"),
        (DELIVERED, "delivered"),
        (FAILED, "failed"),
        (DROPPED, "dropped"),
    ]

    # The order events were written in: a conversation's are delivered in it.
    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=40, unique=True)
    type = models.CharField(max_length=32)
    # The event's `data` as JSON text, encoded once when stored and sent as is.
    data = models.TextField()
    ts = models.BigIntegerField()
    # What orders delivery: a conversation's id, or `user:<id>` for presence.
    order_key = models.CharField(max_length=64)
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    attempts = models.IntegerField(default=0)
    # When it may be sent next; while a node holds it, the end of that node's lease.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_status = models.IntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True, default="")
    # When it was written, or put back by the admin's *retry*: it is given up
    # `WEBHOOK_MAX_AGE` after this.
    queued_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The claim looks for each key's oldest pending event, and for due ones.
            models.Index(
                fields=["order_key", "id"],
                name="outbox_pending_key",
                condition=models.Q(state="pending"),
            ),
            models.Index(
                fields=["next_attempt_at"],
                name="outbox_pending_due",
                condition=models.Q(state="pending"),
            ),
            models.Index(fields=["state", "finished_at"], name="outbox_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


class PushSubscription(models.Model):
    """A browser's Web Push subscription (PROTOCOL 14): where to post and the keys to
    encrypt for (RFC 8291), as `PushSubscription.toJSON()` gives them."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="push_subscriptions"
    )
    endpoint = models.URLField(max_length=1000)
    # The receiver's P-256 public key and auth secret, base64url as the browser sends them.
    p256dh = models.CharField(max_length=100)
    auth = models.CharField(max_length=40)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "endpoint"], name="push_endpoint_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.endpoint[:60]}"
