"""Tether's own Prometheus metrics, declared in one place (docs/deployment.md, "Monitoring").

django-prometheus adds HTTP and database metrics to the same registry and
serves them all at `/metrics`. Hot paths count in batches (one `inc(n)` per
fan-out, not per socket), so metrics cost nothing noticeable at 100,000+
deliveries a second.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONNECTS = Counter("tether_connects_total", "Sockets accepted and welcomed", ["endpoint"])
DISCONNECTS = Counter(
    "tether_disconnects_total", "Sockets closed, by close code", ["endpoint", "code"]
)
FRAMES_IN = Counter("tether_frames_in_total", "Client frames received, by type", ["type"])
FRAMES_OUT = Counter("tether_frames_out_total", "Frames sent, by type", ["type"])
# Fan-out counts in batches, on pre-bound children (no label lookup per publication).
FRAMES_OUT_PUB = FRAMES_OUT.labels("pub")
FRAMES_OUT_MESSAGE = FRAMES_OUT.labels("message")
ERRORS = Counter("tether_errors_total", "`error` frames sent, by code", ["code"])
MESSAGES_STORED = Counter("tether_messages_stored_total", "Chat messages stored (not duplicates)")
PUBLICATIONS = Counter(
    "tether_publications_total", "Topic publications fanned out by this node's hub"
)
SEND_ACK = Histogram(
    "tether_send_ack_seconds", "From a `send` frame in to its `ack` out", buckets=LATENCY_BUCKETS
)
SEND_BATCH_SIZE = Histogram(
    "tether_send_batch_size",
    "Sends stored together in one transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PUBLISH_DELIVER = Histogram(
    "tether_publish_deliver_seconds",
    "From a publication's timestamp to its fan-out on this node",
    buckets=LATENCY_BUCKETS,
)
SYNC_REPLAYED = Counter("tether_sync_replayed_messages_total", "Messages replayed by `sync`")
SYNCS = Counter("tether_syncs_total", "`sync` requests answered")
RECOVERIES = Counter(
    "tether_recoveries_total", "`subscribe` with `since`, by outcome", ["recovered"]
)
HEARTBEAT_TIMEOUTS = Counter("tether_heartbeat_timeouts_total", "Sockets closed with 4408")
RATE_LIMITED = Counter("tether_rate_limited_total", "Frames refused by the rate limit")
HANDSHAKES_REFUSED = Counter(
    "tether_handshakes_refused_total", "Socket handshakes refused over an address's handshake rate"
)
SLOW_CONSUMER_CLOSES = Counter(
    "tether_slow_consumer_closes_total", "Sockets closed with 4509 (outbound queue overflow)"
)

# Webhooks (PROTOCOL 13; realtime/hooks/). Attempts by outcome: `delivered` (2xx),
# `http_error` (another status), `timeout` (no answer within WEBHOOK_TIMEOUT),
# `connection_error` (refused, reset, DNS).
WEBHOOK_ATTEMPTS = Counter(
    "tether_webhook_attempts_total", "Webhook requests made, by outcome", ["outcome"]
)
# Events finished: `delivered`, or `failed` (given up after WEBHOOK_MAX_AGE).
WEBHOOK_DELIVERIES = Counter(
    "tether_webhook_deliveries_total", "Webhook events finished, by result", ["result"]
)
WEBHOOK_EVENT_ATTEMPTS = Histogram(
    "tether_webhook_event_attempts",
    "Requests an event took until delivered or given up",
    buckets=(1, 2, 3, 5, 8, 13, 21, 50, 100, 300),
)
# Read from the database by each node's maintenance pass: the same value on every node.
WEBHOOK_PENDING = Gauge("tether_webhook_pending", "Webhook events waiting to be delivered")
WEBHOOK_FAILED = Gauge("tether_webhook_failed", "Webhook events given up and kept (admin: retry)")
WEBHOOK_OLDEST_PENDING = Gauge(
    "tether_webhook_oldest_pending_seconds", "Age of the oldest webhook event not yet delivered"
)
for _outcome in ("delivered", "http_error", "timeout", "connection_error"):
    WEBHOOK_ATTEMPTS.labels(_outcome)
# Web Push requests (PROTOCOL 14), from the same outbox: `delivered` (2xx), `gone`
# (404/410: the subscription is removed), `http_error` (another status), `timeout`,
# `connection_error`, `refused` (the endpoint now resolves to a private address, or
# its keys cannot be encrypted for: not sent).
PUSH_ATTEMPTS = Counter(
    "tether_push_attempts_total", "Web Push requests made, by outcome", ["outcome"]
)
for _outcome in ("delivered", "gone", "http_error", "timeout", "connection_error", "refused"):
    PUSH_ATTEMPTS.labels(_outcome)
for _result in ("delivered", "failed"):
    WEBHOOK_DELIVERIES.labels(_result)
# Attachments (PROTOCOL 10; realtime/chat/uploads.py): what storage grows by, and what
# the maintenance takes back (docs/deployment.md, runbook "Attachment storage filling up").
ATTACHMENT_UPLOADS = Counter("tether_attachment_uploads_total", "Attachments stored")
ATTACHMENT_UPLOAD_BYTES = Counter(
    "tether_attachment_upload_bytes_total", "Bytes of the attachments stored"
)
ATTACHMENTS_REMOVED = Counter(
    "tether_attachments_removed_total",
    "Attachments no message held, removed ATTACHMENT_UNCLAIMED_TTL after their upload",
)
ATTACHMENT_FILE_DELETE_FAILURES = Counter(
    "tether_attachment_file_delete_failures_total",
    "Attachment files the storage failed to delete (their rows are gone: orphans to sweep)",
)
