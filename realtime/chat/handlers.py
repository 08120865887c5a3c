"""Frame handlers of `/ws/chat/` (PROTOCOL 6): each parses, calls one service, replies."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.cache import cache

from monitoring import metrics
from realtime.chat import conversations, events, fanout, messages, presence, sends
from realtime.chat.node import chat_node
from realtime.node import delivery
from realtime.node.db import in_pool
from realtime.protocol import MAX_ID_CHARS, Frame, bad_request, non_negative, storable_int

if TYPE_CHECKING:
    from realtime.transport.consumer import TetherConsumer

MAX_PRESENCE_QUERY = 500
MAX_CONVERSATIONS_PAGE = 1000
TYPING_EVERY_SECONDS = 1.0


async def starting_positions(consumer: TetherConsumer) -> dict[str, int]:
    """Before `welcome`: the head of each of the user's conversations. Messages stored
    later (after the client hears `welcome`) are delivered live."""
    conn = consumer.conn
    assert conn is not None
    return await database_sync_to_async(conversations.conversation_heads)(conn.user_id)


async def subscribe_all(consumer: TetherConsumer, heads: dict[str, int]) -> None:
    """After `welcome`: receive every conversation of the user from `heads` on (what
    was stored meanwhile is filled from the store when the next message shows the
    gap, or by the node's head check)."""
    conn = consumer.conn
    assert conn is not None
    delivery.hold(conn)
    asyncio.get_running_loop().call_later(
        delivery.RESUME_WINDOW_SECONDS, delivery.release, conn, fanout.read_messages
    )
    hub = consumer.runtime.hub
    for cid, head in heads.items():
        # `heads` was read before the socket was listed: a `left` handled since
        # (the socket had no removals before) predates nothing of this read.
        if delivery.removed_since(conn, cid, 0) or cid in conn.cursors:
            continue
        delivery.start(conn, cid, head)
        await hub.subscribe(events.conversation_group(cid), conn)


async def unsubscribe_all(consumer: TetherConsumer) -> None:
    conn = consumer.conn
    assert conn is not None
    hub = consumer.runtime.hub
    for cid in list(conn.cursors):
        await hub.unsubscribe(events.conversation_group(cid), conn)
        delivery.forget(conn, cid)


async def _store(request: sends.SendRequest) -> dict[str, Any]:
    started = time.monotonic()
    # Stored with whatever else arrived meanwhile, and published, before the ack.
    sent = await chat_node.sends.send(request)
    metrics.SEND_ACK.observe(time.monotonic() - started)
    return sent.ack(None)


async def handle_send(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    request = sends.request(
        consumer.user,
        frame.get("conversation"),
        frame.id,
        frame.get("body"),
        frame.get("reply_to"),
        frame.get("attachments"),
    )
    return await _store(request)


async def handle_edit(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    """PROTOCOL 10: an event in the same batches as sends (chat/sends.py)."""
    request = sends.edit_request(
        consumer.user,
        frame.get("conversation"),
        frame.id,
        frame.get("message_id"),
        frame.get("body"),
    )
    return await _store(request)


async def handle_delete(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    request = sends.delete_request(
        consumer.user, frame.get("conversation"), frame.id, frame.get("message_id")
    )
    return await _store(request)


async def handle_react(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    request = sends.react_request(
        consumer.user,
        frame.get("conversation"),
        frame.id,
        frame.get("message_id"),
        frame.get("emoji"),
        frame.get("on"),
    )
    return await _store(request)


def _positions(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise bad_request("positions", "must be an object of conversation id → seq")
    for cid, seq in value.items():
        non_negative(seq, f"positions.{cid[:MAX_ID_CHARS]}")
    return value


def _page(value: Any) -> str:
    if value is None:
        return ""
    if not conversations.valid_conversation_id(value):
        raise bad_request("page", "must be the `next` of an earlier `synced` (a string)")
    return value


async def handle_sync(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    """One page of the user's conversations, in id order (docs/protocol.md, "Paged
    sync"): the listed ones replayed, the others announced with `joined`. The
    answer stays bounded however many conversations the user is in; every
    conversation is live whatever page it is on (subscribed at the socket's open)."""
    positions = _positions(frame.get("positions"))
    page = _page(frame.get("page"))
    conn = consumer.conn
    assert conn is not None
    # A removal may commit, and its `left` be handled here, while this sync runs:
    # what was read before then must not subscribe the socket again.
    seen = delivery.removals_seen(conn)
    heads, more = await database_sync_to_async(conversations.conversation_heads_page)(
        conn.user_id, page, settings.SYNC_PAGE_CONVERSATIONS
    )
    result: dict[str, Any] = {}
    # The page's replays share one byte budget: a page of long histories of long
    # messages stops at MAX_REPLY_BYTES (the rest `complete: false`, paged with
    # `history`) instead of overflowing the socket's outbound queue (4509).
    budget = delivery.ByteBudget(settings.MAX_REPLY_BYTES)
    for cid, position in positions.items():
        head = heads.get(cid)
        if head is None or delivery.removed_since(conn, cid, seen):
            continue  # not a member (any more): never replayed
        if cid not in conn.cursors:  # joined a moment ago
            delivery.start(conn, cid, head)
            await consumer.runtime.hub.subscribe(events.conversation_group(cid), conn)
        replayed, cursor, complete = await delivery.replay(
            conn, cid, position, settings.REPLAY_LIMIT, head, fanout.read_messages, budget
        )
        metrics.SYNC_REPLAYED.inc(replayed)
        if cid not in conn.cursors:
            continue  # removed meanwhile: its `left` is out, nothing after it
        result[cid] = {"seq": max(head, cursor), "replayed": replayed, "complete": complete}
    unlisted = [cid for cid in heads if cid not in positions]
    if unlisted:
        reprs = await database_sync_to_async(conversations.conversation_reprs)(
            conn.user_id, unlisted
        )
        for conversation in reprs:
            if not delivery.removed_since(conn, conversation["id"], seen):
                await consumer.send_frame({"type": "joined", "conversation": conversation})
    answer: dict[str, Any] = {"type": "synced", "conversations": result, "more": more}
    if more:
        # Held live messages wait for the last page (or the resume window's end):
        # their conversations' replays may be on a later page.
        answer["next"] = max(heads)
    else:
        delivery.release(conn, fanout.read_messages)
    metrics.SYNCS.inc()
    return answer


async def handle_history(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    data = await database_sync_to_async(messages.history)(
        consumer.user.id,
        frame.get("conversation"),
        frame.get("before"),
        frame.get("after"),
        frame.get("limit"),
    )
    return {"type": "result", "data": data}


async def handle_conversations(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    # Paged like GET /api/conversations/ (an addition): `limit` (default and most
    # 1000) and `offset`; the page is also cut to MAX_REPLY_BYTES (`has_more`).
    limit = frame.get("limit", MAX_CONVERSATIONS_PAGE)
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= MAX_CONVERSATIONS_PAGE
    ):
        raise bad_request("limit", f"must be an integer from 1 to {MAX_CONVERSATIONS_PAGE}")
    offset = non_negative(frame.get("offset", 0), "offset")
    if not storable_int(offset):
        raise bad_request("offset", "is beyond any list")
    items, has_more = await database_sync_to_async(conversations.list_conversations)(
        consumer.user.id, limit, offset
    )
    return {"type": "result", "data": {"conversations": items, "has_more": has_more}}


async def handle_presence_query(consumer: TetherConsumer, frame: Frame) -> dict[str, Any]:
    users = frame.get("users")
    if (
        not isinstance(users, list)
        or len(users) > MAX_PRESENCE_QUERY
        or not all(isinstance(u, int) and not isinstance(u, bool) for u in users)
    ):
        raise bad_request("users", f"must be a list of at most {MAX_PRESENCE_QUERY} user ids")
    data = await database_sync_to_async(presence.query)(users)
    return {"type": "result", "data": data}


async def handle_read(consumer: TetherConsumer, frame: Frame) -> None:
    cid = frame.get("conversation")
    moved = await database_sync_to_async(messages.mark_read)(
        consumer.user.id, cid, frame.get("seq")
    )
    if moved is not None:
        await events.read_receipt(cid, consumer.user, moved)


@in_pool
def _first_typing_everywhere(user_id: int, cid: str) -> bool:
    """Whether no node passed on this user's typing in `cid` within the last second:
    the shared cache (Redis in production) adds the key only if absent (SET NX EX)."""
    return cache.add(f"tether:typing:{user_id}:{cid}", 1, timeout=int(TYPING_EVERY_SECONDS))


async def handle_typing(consumer: TetherConsumer, frame: Frame) -> None:
    cid = frame.get("conversation")
    conn = consumer.conn
    assert conn is not None
    if not isinstance(cid, str) or cid not in conn.cursors:
        await database_sync_to_async(conversations.access_conversation)(consumer.user.id, cid)
    # At most one a second per user and conversation: first on this node (no I/O),
    # then across nodes (the user's sockets may sit on several).
    now = time.monotonic()
    last = chat_node.typing_seen.get((conn.user_id, cid), 0.0)
    if now - last < TYPING_EVERY_SECONDS:
        return
    chat_node.typing_seen[(conn.user_id, cid)] = now
    if not await _first_typing_everywhere(conn.user_id, cid):
        return
    await events.typing(cid, consumer.user)


async def before_frame(consumer: TetherConsumer, frame: Frame) -> None:
    """A first frame other than `sync` means the client is not resuming: stop holding."""
    conn = consumer.conn
    if conn is not None and conn.holding and frame.type not in ("sync", "ping", "pong"):
        delivery.release(conn, fanout.read_messages)


CHAT_HANDLERS = {
    "send": handle_send,
    "edit": handle_edit,
    "delete": handle_delete,
    "react": handle_react,
    "sync": handle_sync,
    "history": handle_history,
    "conversations": handle_conversations,
    "presence.query": handle_presence_query,
    "read": handle_read,
    "typing": handle_typing,
}
