"""The Django admin's webhook events: pending and failed ones with the receiver's last
answer, and the *retry* action."""

from __future__ import annotations

import pytest
from django.utils import timezone

from realtime.hooks import outbox
from realtime.models import OutboxEvent

pytestmark = pytest.mark.django_db


def test_failed_events_are_listed_with_their_last_answer_and_can_be_retried(admin_client) -> None:
    outbox.record([outbox.event("member.joined", "k1", {"conversation": "k1"}, 0)])
    outbox.record([outbox.event("member.left", "k2", {"conversation": "k2"}, 0)])
    failed, pending = OutboxEvent.objects.order_by("id")
    OutboxEvent.objects.filter(id=failed.id).update(
        state="failed",
        attempts=17,
        last_status=503,
        last_error="HTTP 503: down for maintenance",
        finished_at=timezone.now(),
    )
    url = "/admin/realtime/outboxevent/"
    page = admin_client.get(url, {"state__exact": "failed"}).content.decode()
    assert failed.event_id in page and "HTTP 503: down for maintenance" in page
    assert pending.event_id not in page
    response = admin_client.post(
        url, {"action": "retry_selected", "_selected_action": [failed.id, pending.id]}
    )
    assert response.status_code == 302
    row = OutboxEvent.objects.get(id=failed.id)
    assert (row.state, row.attempts, row.finished_at) == ("pending", 0, None)
    assert row.next_attempt_at <= timezone.now()
    assert admin_client.get(f"{url}{failed.id}/change/").status_code == 200
