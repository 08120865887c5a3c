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

    def __str__(self) -> str:
        return self.id
