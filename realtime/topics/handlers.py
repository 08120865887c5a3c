"""Frame handlers of `/ws/stream/` (PROTOCOL 7): subscribe and unsubscribe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings

from monitoring import metrics
from realtime.node import delivery, quotas, registry
from realtime.protocol import Code, Frame, TetherError, bad_request, non_negative
from realtime.topics import fanout as topic_fanout
from realtime.topics.events import group_name
from realtime.topics.service import publication, readable_namespace
from realtime.topics.store import get_store

if TYPE_CHECKING:
    from realtime.transport.consumer import TetherConsumer

MAX_EPOCH_CHARS = 64


def _since(value: Any) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise bad_request("since", "must be an object {offset, epoch}")
    offset, epoch = value.get("offset"), value.get("epoch")
    non_negative(offset, "since.offset")
    if not isinstance(epoch, str) or not 1 <= len(epoch) <= MAX_EPOCH_CHARS:
        raise bad_request("since.epoch", f"must be a string of 1 to {MAX_EPOCH_CHARS} characters")
    return offset, epoch


async def handle_subscribe(consumer: TetherConsumer, frame: Frame) -> None:
    # Counted first, refused or not: probing topics is churn too (docs/security.md).
    await quotas.acharge("subscriptions", consumer.user.pk)
    if frame.get("since") is not None:
        await quotas.acharge("topic_history", consumer.user.pk)
    topic = frame.get("topic")
    ns = readable_namespace(consumer.user, topic, token=frame.get("token"))
    since, since_epoch = _since(frame.get("since"))
    conn = consumer.conn
    assert conn is not None
    if topic not in conn.epochs and len(conn.epochs) >= settings.MAX_SUBSCRIPTIONS_PER_CLIENT:
        raise TetherError(
            Code.LIMIT_EXCEEDED,
            f"at most {settings.MAX_SUBSCRIPTIONS_PER_CLIENT} topics per connection",
        )
    group = group_name(topic)
    state = delivery.sequence_state(conn, topic)
    # Under the sequence's lock, live publications queue in `pending` while the
    # position is read and the reply sent; the cursor then lets through exactly
    # those after it (nothing missed, nothing twice between reply and live).
    async with state.lock:
        new = topic not in conn.epochs
        conn.epochs[topic] = None
        conn.cursors[topic] = 0
        if new:
            topic_fanout.TOPIC_OF_GROUP[group] = topic
            await consumer.runtime.hub.subscribe(group, conn)
        try:
            snap = await get_store().snapshot(topic, ns, since, since_epoch)
        except Exception:
            await _drop(consumer, topic)
            raise
        conn.cursors[topic] = snap.offset
        conn.epochs[topic] = snap.epoch
        entries = snap.entries
        if entries is not None and _replay_bytes(entries) > settings.MAX_REPLY_BYTES:
            # All or nothing (PROTOCOL 7: `recovered` means every publication is
            # here): the client rebuilds from REST history, by page, from `offset`.
            entries = None
        recovered = entries is not None
        if since is not None:
            metrics.RECOVERIES.labels("true" if recovered else "false").inc()
        reply = {
            "type": "subscribed",
            "id": frame.id,
            "topic": topic,
            "offset": snap.offset,
            "epoch": snap.epoch,
            "recovered": recovered,
            "publications": [publication(e) for e in entries or ()],
        }
        if frame.id is None:
            del reply["id"]
        await consumer.send_frame(reply)
    if state.pending:
        await delivery.catch_up(conn, topic, topic_fanout.read_pubs, lossy=True)
    if new:
        await registry.set_subscriptions(conn.id, list(conn.epochs))


def _replay_bytes(entries: list[Any]) -> int:
    """About the bytes the publications take in the reply: their data (already JSON)
    and the few fields around each."""
    return sum(len(data.encode()) + 48 for _, _, data in entries)


async def handle_unsubscribe(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    await quotas.acharge("subscriptions", consumer.user.pk)
    topic = frame.get("topic")
    conn = consumer.conn
    assert conn is not None
    if not isinstance(topic, str) or topic not in conn.epochs:
        # The same answer as `subscribe` would give (nothing to learn by probing); a
        # topic subscribed to may always be left (its token is not asked again).
        readable_namespace(consumer.user, topic, token=frame.get("token"))
    if topic in conn.epochs:
        await _drop(consumer, topic)
        await registry.set_subscriptions(conn.id, list(conn.epochs))
    return {"type": "unsubscribed", "topic": topic}


async def _drop(consumer: TetherConsumer, topic: str) -> None:
    conn = consumer.conn
    assert conn is not None
    conn.epochs.pop(topic, None)
    delivery.forget(conn, topic)
    await consumer.runtime.hub.unsubscribe(group_name(topic), conn)


async def unsubscribe_all(consumer: TetherConsumer) -> None:
    conn = consumer.conn
    assert conn is not None
    for topic in list(conn.epochs):
        await _drop(consumer, topic)


STREAM_HANDLERS = {"subscribe": handle_subscribe, "unsubscribe": handle_unsubscribe}
