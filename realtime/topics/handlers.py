"""Frame handlers of `/ws/stream/` (PROTOCOL 7): subscribe and unsubscribe, and the end
of subscriptions the user's rights no longer allow."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.conf import settings

from monitoring import metrics
from realtime.node import delivery, registry
from realtime.node.db import in_pool
from realtime.protocol import Code, Frame, TetherError, bad_request, non_negative
from realtime.rest import quotas
from realtime.rest.permissions import current_user
from realtime.topics import fanout as topic_fanout
from realtime.topics.events import group_name
from realtime.topics.service import (
    STAFF,
    may_read,
    namespace_of,
    publication,
    readable_namespace,
)
from realtime.topics.store import EMPTY_EPOCH, Namespace, get_store

if TYPE_CHECKING:
    from realtime.transport.consumer import TetherConsumer

log = logging.getLogger("tether.topics")

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


def _readable_now(user_id: int, topic: str, token: Any) -> Namespace:
    return readable_namespace(current_user(user_id), topic, token=token)


async def _readable(consumer: TetherConsumer, topic: Any, token: Any) -> Namespace:
    """`readable_namespace` for this socket's user. Where the answer depends on the
    user's rights, they are read from the database now: the socket's user object is
    as old as the socket, its permissions cached since the first check."""
    if namespace_of(topic).access == STAFF:
        return await in_pool(_readable_now)(consumer.user.pk, topic, token)
    return readable_namespace(consumer.user, topic, token=token)


async def handle_subscribe(consumer: TetherConsumer, frame: Frame) -> None:
    # Counted first, refused or not: probing topics is churn too (docs/security.md).
    await quotas.acharge("subscriptions", consumer.user.pk)
    if frame.get("since") is not None:
        await quotas.acharge("topic_history", consumer.user.pk)
    topic = frame.get("topic")
    conn = consumer.conn
    assert conn is not None
    # A change of rights may come between the check below and the subscription:
    # then the subscription is checked again once made (end of this handler).
    rights_seen = conn.rights_changes
    try:
        ns = await _readable(consumer, topic, frame.get("token"))
    except TetherError:
        if isinstance(topic, str) and topic in conn.epochs:
            # Refused what it holds: the rights shrank without the news reaching this
            # socket (a change that sent no signal, docs/security.md); end it now.
            await end_forbidden(consumer)
        raise
    since, since_epoch = _since(frame.get("since"))
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
        try:
            if new:
                topic_fanout.TOPIC_OF_GROUP[group] = topic
                await consumer.runtime.hub.subscribe(group, conn)
            snap = await get_store().snapshot(topic, ns, since, since_epoch)
            if snap.epoch == EMPTY_EPOCH and state.pending:
                # The first publications came while the empty topic was read: answer
                # their epoch, or each later `pub` would look like a new epoch and
                # rewind the cursor over what `pending` already delivered.
                snap = await get_store().snapshot(topic, ns, since, since_epoch)
        except Exception:
            # Nothing of a subscription that never answered stays on the node.
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
    if ns.access == STAFF and conn.rights_changes != rights_seen:
        await end_forbidden(consumer)


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
        await _readable(consumer, topic, frame.get("token"))
    if topic in conn.epochs:
        await _drop(consumer, topic)
        await registry.set_subscriptions(conn.id, list(conn.epochs))
    return {"type": "unsubscribed", "topic": topic}


async def _drop(consumer: TetherConsumer, topic: str) -> None:
    conn = consumer.conn
    assert conn is not None
    conn.epochs.pop(topic, None)
    delivery.forget(conn, topic)
    hub = consumer.runtime.hub
    group = group_name(topic)
    await hub.unsubscribe(group, conn)
    if group not in hub.groups:
        # The last local socket left: the node keeps nothing of the topic
        # (a loop of subscribe/unsubscribe over random names leaves memory flat).
        topic_fanout.TOPIC_OF_GROUP.pop(group, None)


def _still_allowed(user_id: int, topics: list[str]) -> set[str]:
    user = current_user(user_id)
    return {topic for topic in topics if may_read(user, topic, namespace_of(topic))}


async def rights_changed(consumer: TetherConsumer) -> None:
    """The user's rights changed (staff status, a permission, a group; accounts'
    receivers tell every node): end what they no longer allow."""
    conn = consumer.conn
    if conn is None or conn.closing:
        return
    conn.rights_changes += 1
    await end_forbidden(consumer)


async def end_forbidden(consumer: TetherConsumer) -> None:
    """End the subscriptions to `staff` namespaces that the user's current rights no
    longer allow, each with an `unsubscribed` carrying `reason: "forbidden"` and no
    `id` (docs/protocol.md, section 7)."""
    conn = consumer.conn
    assert conn is not None
    topics = [topic for topic in conn.epochs if namespace_of(topic).access == STAFF]
    if not topics:
        return
    allowed = await in_pool(_still_allowed)(conn.user_id, topics)
    ended = False
    for topic in topics:
        state = conn.sequences.get(topic)
        if topic in allowed or state is None:
            continue
        # Under the topic's lock: a subscribe under way answers first, so the client
        # hears `subscribed` before `unsubscribed`, never the other way round.
        async with state.lock:
            if topic not in conn.epochs or conn.closing:
                continue
            await _drop(consumer, topic)
            await consumer.send_frame(
                {"type": "unsubscribed", "topic": topic, "reason": "forbidden"}
            )
        ended = True
        log.info("connection %s: %s no longer allowed; unsubscribed", conn.id, topic)
    if ended:
        await registry.set_subscriptions(conn.id, list(conn.epochs))


async def unsubscribe_all(consumer: TetherConsumer) -> None:
    conn = consumer.conn
    assert conn is not None
    for topic in list(conn.epochs):
        await _drop(consumer, topic)


STREAM_HANDLERS = {"subscribe": handle_subscribe, "unsubscribe": handle_unsubscribe}
