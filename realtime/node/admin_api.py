"""Staff APIs (PROTOCOL 9): effective configuration and live connections, each behind
an operator's right (realtime/rest/permissions.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from realtime.models import LiveConnection, Node
from realtime.node import control, registry
from realtime.node.runtime import get_runtime
from realtime.protocol import MAX_STORABLE_INT, Code, TetherError, bad_request, user_repr
from realtime.rest import openapi as doc
from realtime.rest.permissions import DISCONNECT, VIEW_CONNECTIONS, VIEW_OPERATIONS, HasRight

MAX_PAGE = 500
MAX_NUMBER = 1e9  # seconds (31 years) or rows


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def connection_repr(c: LiveConnection, now: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "user": user_repr(c.user),
        "node": c.node.name,
        "endpoint": c.endpoint,
        "remote_addr": c.remote_addr,
        "user_agent": c.user_agent,
        "auth_method": c.auth_method,
        "connected_at": _ms(c.connected_at),
        "last_seen": _ms(c.last_seen),
        "idle_seconds": round((now - c.last_seen).total_seconds(), 1),
    }


class StaffView(APIView):
    """A staff row: the right it needs is the view's `right`."""

    right = ""

    def get_permissions(self) -> list[Any]:
        # No default: an empty right would be every superuser's and nobody else's.
        assert self.right, f"{type(self).__name__} names no right"
        return [HasRight.of(self.right)()]


def _number(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(name, "must be a number") from None
    if value < 0 or value != value:
        raise bad_request(name, "must be >= 0")
    # Also refuses "inf": past this, `idle_gt` overflows a timedelta and `offset` the
    # database's integers (both were 500s); no real query needs more.
    if value > MAX_NUMBER:
        raise bad_request(name, f"must be at most {MAX_NUMBER:g}")
    return value


class ConnectionsView(StaffView):
    right = VIEW_CONNECTIONS

    @extend_schema(
        summary="Live connections",
        description="Oldest first, on every node.",
        tags=["admin"],
        parameters=[
            doc.query("user", {"type": "string"}, "a user id or a username"),
            doc.query("node", {"type": "string"}, "a node name"),
            doc.query(
                "idle_gt",
                {"type": "number", "minimum": 0, "maximum": MAX_NUMBER},
                "seconds since the socket was last heard from (as recorded, in batches)",
            ),
            doc.query(
                "limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "default 100"
            ),
            doc.query(
                "offset",
                {"type": "integer", "minimum": 0, "maximum": MAX_NUMBER},
                "connections to skip",
            ),
        ],
        responses={
            200: doc.ConnectionList,
            400: doc.error("`bad_request`: `user`, `idle_gt`, `limit` or `offset` invalid"),
        },
    )
    def get(self, request: Request) -> Response:
        rows = LiveConnection.objects.select_related("user", "node").order_by("connected_at", "id")
        user = request.query_params.get("user")
        if user:
            # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
            is_id = user.isascii() and user.isdigit()
            if is_id and int(user) > MAX_STORABLE_INT:
                rows = rows.none()  # no user has it; the database could not compare it
            elif is_id:
                rows = rows.filter(user_id=int(user))
            else:
                rows = rows.filter(user__username__iexact=user)
        node = request.query_params.get("node")
        if node:
            rows = rows.filter(node__name=node)
        now = timezone.now()
        idle_gt = _number(request, "idle_gt")
        if idle_gt is not None:
            rows = rows.filter(last_seen__lt=now - timedelta(seconds=idle_gt))
        limit = int(_number(request, "limit") or 100)
        if not 1 <= limit <= MAX_PAGE:
            raise bad_request("limit", f"must be 1 to {MAX_PAGE}")
        offset = int(_number(request, "offset") or 0)
        page = list(rows[offset : offset + limit + 1])
        return Response(
            {
                "connections": [connection_repr(c, now) for c in page[:limit]],
                "has_more": len(page) > limit,
            }
        )


class ConnectionDetailView(StaffView):
    right = DISCONNECT

    @extend_schema(
        summary="Close a connection",
        description="Closed with 4403 by whichever node holds it; its record goes with it.",
        tags=["admin"],
        parameters=[doc.path("connection_id", {"type": "string"}, "the connection's id")],
        responses={
            204: OpenApiResponse(description="the close was sent"),
            404: doc.error("`not_found`: no live connection with that id"),
        },
    )
    def delete(self, request: Request, connection_id: str) -> Response:
        # Closed by whichever node holds it; that node's cleanup removes the record.
        if not control.disconnect([connection_id]):
            raise TetherError(Code.NOT_FOUND, f"no live connection {connection_id}")
        return Response(status=status.HTTP_204_NO_CONTENT)


class CleanupView(StaffView):
    right = DISCONNECT

    @extend_schema(
        summary="Remove records no node holds",
        tags=["admin"],
        request=None,
        responses={200: doc.CleanupBody},
    )
    def post(self, request: Request) -> Response:
        """Remove records no node holds: of silent nodes, and sockets silent too long.

        A live socket is heard from at least every PING_TIMEOUT seconds (or it is
        closed with 4408) and its node writes `last_seen` every maintenance pass,
        so a record older than that plus two passes belongs to no socket.
        """
        period = settings.TETHER_MAINTENANCE_SECONDS
        reaped = registry.reap_silent_nodes(registry.reap_after())
        cutoff = timezone.now() - timedelta(seconds=settings.PING_TIMEOUT + 2 * period + 5)
        stale = LiveConnection.objects.filter(last_seen__lt=cutoff)
        users = set(stale.values_list("user_id", flat=True)) | set(reaped.user_ids)
        removed, _ = stale.delete()
        async_to_sync(get_runtime().recheck_users)(users)
        return Response(
            {
                "removed": removed + reaped.connections,
                "nodes_removed": reaped.nodes,
            }
        )


def _sum(rows: list[dict[str, Any]], name: str) -> float:
    return round(sum(row.get(name) or 0 for row in rows), 2)


def _worst(rows: list[dict[str, Any]], name: str) -> float | None:
    values = [row["latency_ms"].get(name) for row in rows if row.get("latency_ms")]
    values = [v for v in values if v is not None]
    return max(values) if values else None


@extend_schema(summary="Cluster and node figures", tags=["admin"], responses={200: doc.StatsBody})
class StatsView(StaffView):
    """Every live node with its figures and process diagnostics, and cluster totals.

    Each node refreshes its figures with its heartbeat (every 1 to 5 s); a node
    silent (`registry.silent_after`: three missed heartbeats, at least 15 s) is listed
    as not alive and left out
    of the totals (the reaper removes it soon after)."""

    right = VIEW_OPERATIONS

    def get(self, request: Request) -> Response:
        now = timezone.now()
        nodes = []
        for node in Node.objects.order_by("name"):
            alive = registry.is_alive(node.last_heartbeat, now)
            nodes.append(
                {
                    "name": node.name,
                    "host": node.host,
                    "alive": alive,
                    "started_at": _ms(node.started_at),
                    "last_heartbeat": _ms(node.last_heartbeat),
                    **(node.stats or {"connections": node.connection_count}),
                }
            )
        live = [n for n in nodes if n["alive"]]
        totals = {
            "nodes": len(live),
            "connections": _sum(live, "connections"),
            "subscriptions": _sum(live, "subscriptions"),
            "messages_per_s": _sum(live, "messages_per_s"),
            "publications_per_s": _sum(live, "publications_per_s"),
            "deliveries_per_s": _sum(live, "deliveries_per_s"),
            # Percentiles do not add up across nodes: the worst node's is shown.
            "latency_ms": {
                name: _worst(live, name)
                for name in (
                    "send_ack_p50",
                    "send_ack_p99",
                    "publish_deliver_p50",
                    "publish_deliver_p99",
                )
            },
        }
        return Response({"totals": totals, "nodes": nodes})
