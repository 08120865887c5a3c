"""/ready/ says which check failed to anyone, and why only to operators (staff with the
right to view operations, docs/security.md)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import User
from monitoring import views


async def _down() -> None:
    raise ConnectionError("redis.internal:6379 refused the connection")


@pytest.mark.django_db
def test_why_a_check_failed_is_for_staff_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "check_channel_layer", _down)
    anonymous = Client().get("/ready/")
    assert anonymous.status_code == 503
    assert anonymous.json()["checks"] == {"database": "ok", "channel_layer": "failed"}
    user = Client()
    user.force_login(User.objects.create_user("someone"))
    assert user.get("/ready/").json()["checks"]["channel_layer"] == "failed"
    staff = Client()
    op = User.objects.create_user("op", is_staff=True)
    staff.force_login(op)
    assert staff.get("/ready/").json()["checks"]["channel_layer"] == "failed"
    op.user_permissions.add(Permission.objects.get(codename="view_operations"))
    shown = staff.get("/ready/").json()["checks"]["channel_layer"]
    assert shown == "ConnectionError: redis.internal:6379 refused the connection"
