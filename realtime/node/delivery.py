"""Delivery cursors: every message a socket receives, live or replayed, goes through here.

Per socket and sequence (a conversation or a topic) the cursor is the last
position delivered. A position at or below it is a duplicate and dropped; the
next one is sent; a jump means the channel layer lost or reordered something,
and the missing range is read from the store first (docs/architecture.md,
"Delivery cursors"). While the store is being read, live arrivals wait in
`pending`, so nothing is lost, doubled or reordered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from realtime.node.connection import Connection

log = logging.getLogger("tether.delivery")

# Reads the store: (sequence key, after, up to) → [(position, encoded frame)] in order.
RangeReader = Callable[[str, int, int], Awaitable[list[tuple[int, str]]]]


@dataclass
class SequenceState:
    """Per socket and sequence: the lock held while reading the store, and arrivals meanwhile."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: list[tuple[int, str]] = field(default_factory=list)
    filler: asyncio.Task[None] | None = None


def sequence_state(conn: Connection, key: str) -> SequenceState:
    """The socket's per-sequence lock and pending arrivals (created on first use)."""
    state = conn.sequences.get(key)
    if state is None:
        state = conn.sequences[key] = SequenceState()
    return state


# After `welcome`, live frames wait this long for the client's `sync`: a message
# arriving between the welcome and the sync would otherwise come before the
# replay (out of order) or twice. A first frame that is not `sync` ends it early.
RESUME_WINDOW_SECONDS = 1.5


def hold(conn: Connection) -> None:
    """Queue live frames (in each sequence's `pending`) until `release`."""
    conn.holding = True


def release(conn: Connection, read_range: RangeReader) -> None:
    """Deliver what was held, per sequence, in order."""
    if not conn.holding:
        return
    conn.holding = False
    for key, state in list(conn.sequences.items()):
        if state.pending and not state.lock.locked():
            state.filler = asyncio.ensure_future(catch_up(conn, key, read_range))


# Runs of sent positions a socket keeps per conversation (see SentRuns.add).
MAX_SENT_RUNS = 32


@dataclass
class SentRuns:
    """Which positions of a sequence a socket was sent: every run in `closed`, each
    (after, up to), and the current one from `mark` to the cursor. A cursor moves
    without sending when a socket starts at the head and when a `sync` moves it."""

    mark: int
    closed: list[tuple[int, int]] = field(default_factory=list)

    def add(self, after: int, upto: int) -> None:
        """Record (after, up to] as sent, merging touching runs.

        Holes between runs come from a `sync` whose position lies above the
        socket's cursor (the client says it holds those) or that was incomplete
        (the client pages them with `history`). A client that keeps doing that
        would grow the list without end; beyond MAX_SENT_RUNS the lowest hole is
        taken as held, as the client said, so every per-socket structure stays
        bounded (docs/benchmarks.md, "Soak")."""
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted([*self.closed, (after, upto)]):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        while len(merged) > MAX_SENT_RUNS:
            merged[0:2] = [(merged[0][0], merged[1][1])]
        self.closed = merged

    def unsent(self, after: int, cursor: int) -> list[tuple[int, int]]:
        """The ranges (after, up to] between `after` and the cursor never sent, in
        order (above the cursor nothing was sent)."""
        holes: list[tuple[int, int]] = []
        at = after
        for lo, hi in sorted([*self.closed, (self.mark, cursor)]):
            if lo > at:
                holes.append((at, min(lo, cursor)))
            at = max(at, hi)
            if at >= cursor:
                break
        return [(lo, hi) for lo, hi in holes if hi > lo]


def start(conn: Connection, key: str, position: int) -> None:
    """Deliver `key` on this socket from after `position` on."""
    conn.cursors[key] = position
    conn.sent_runs[key] = SentRuns(position)


def forget(conn: Connection, key: str) -> None:
    """Stop delivering `key` on this socket."""
    conn.cursors.pop(key, None)
    conn.sequences.pop(key, None)
    conn.sent_runs.pop(key, None)


def _skip_to(conn: Connection, key: str, position: int) -> None:
    """Move the cursor without sending what lies between."""
    runs = conn.sent_runs.setdefault(key, SentRuns(conn.cursors.get(key, 0)))
    cursor = conn.cursors.get(key, 0)
    if cursor > runs.mark:
        runs.add(runs.mark, cursor)
    runs.mark = position
    conn.cursors[key] = position


async def _send_next(
    conn: Connection, key: str, items: list[tuple[int, str]], lossy: bool = False
) -> None:
    """Send, in order, each item that is exactly the next position.

    A `lossy` sequence (topic history is capped and expires) sends what it has in
    order and skips what the store no longer holds, instead of waiting for it.
    """
    for position, text in items:
        cursor = conn.cursors.get(key)
        if cursor is None:
            return
        if position == cursor + 1 or (lossy and position > cursor):
            conn.cursors[key] = position
            await conn.send_text(text)


def ready_for(conn: Connection, key: str, position: int) -> bool:
    """Whether `position` of `key` may go out on `conn` right now, in order; if so the
    cursor moves to it (the caller must send it)."""
    cursor = conn.cursors.get(key)
    if cursor is None or position != cursor + 1 or conn.holding or conn.closing:
        return False
    state = conn.sequences.get(key)
    if state is not None and (
        state.pending
        or state.lock.locked()
        or (state.filler is not None and not state.filler.done())
    ):
        return False
    conn.cursors[key] = position
    return True


async def deliver(
    conn: Connection,
    key: str,
    position: int,
    text: str,
    read_range: RangeReader,
    lossy: bool = False,
) -> None:
    """Deliver one live frame at `position` of sequence `key` to `conn`, in order, once.

    Never waits for the store: a gap is filled by a task of this socket's own,
    so the hub goes on serving every other socket meanwhile.
    """
    if ready_for(conn, key, position):
        await conn.send_text(text)
        return
    cursor = conn.cursors.get(key)
    if cursor is None or conn.closing or position <= cursor:
        return
    state = sequence_state(conn, key)
    busy = state.lock.locked() or (state.filler is not None and not state.filler.done())
    state.pending.append((position, text))
    if not busy and not conn.holding:
        state.filler = asyncio.ensure_future(catch_up(conn, key, read_range, lossy=lossy))


async def deliver_all(
    conns: Iterable[Connection],
    key: str,
    position: int,
    text: str,
    read_range: RangeReader,
    lossy: bool = False,
) -> None:
    """`deliver` to every local socket of a sequence, framing the text once for all."""
    await deliver_run(conns, key, [(position, text)], read_range, lossy)


async def deliver_run(
    conns: Iterable[Connection],
    key: str,
    items: list[tuple[int, str]],
    read_range: RangeReader,
    lossy: bool = False,
) -> None:
    """Deliver consecutive positions of a sequence to every local socket.

    Each item is framed once for all sockets. A socket whose transport takes
    ready-made frames gets every item it is exactly ready for in one write (one
    system call for a batch of messages); the rest goes through `deliver`
    (gaps, holds, a full transport).
    """
    framed: list[bytes] = []  # items[i] framed, built on first need
    now = time.monotonic()
    for conn in conns:
        ready = 0
        outbound = conn.outbound
        if outbound is not None and outbound.direct and not outbound.blocked:
            while ready < len(items) and ready_for(conn, key, items[ready][0]):
                if ready == len(framed):
                    framed.append(outbound.frame(items[ready][1]))
                ready += 1
            if ready:
                conn.last_out = now
                data = framed[0] if ready == 1 else b"".join(framed[:ready])
                if not outbound.write_frame(data):
                    for _, text in items[:ready]:  # not open (yet): the server's own path
                        await conn.send_text(text)
        for position, text in items[ready:]:
            await deliver(conn, key, position, text, read_range, lossy)


async def catch_up(
    conn: Connection,
    key: str,
    read_range: RangeReader,
    head: int | None = None,
    lossy: bool = False,
) -> None:
    """Fill the gap up to the pending arrivals (or `head`) from the store, then send them."""
    if key not in conn.cursors:
        # Left meanwhile (a fill scheduled before an unsubscribe): recreating the
        # sequence's state would keep it on the socket for nothing.
        return
    state = sequence_state(conn, key)
    if state.lock.locked() or conn.holding:
        # The running fill picks everything up; a held socket waits for its `sync`
        # (sending now would put live messages before the replay, or twice).
        return
    async with state.lock:
        try:
            while key in conn.cursors and not conn.closing:
                cursor = conn.cursors[key]
                arrived = {p: t for p, t in state.pending if p > cursor}
                state.pending = []
                target = max([*arrived, head or 0])
                if target <= cursor:
                    break
                head = None
                # The store has every committed message: read the whole gap (what
                # arrived is in it too, and may itself have holes).
                stored = dict(await read_range(key, cursor, target))
                await _send_next(conn, key, sorted({**arrived, **stored}.items()), lossy)
                now_at = conn.cursors.get(key)
                if now_at is None:
                    break  # left the conversation meanwhile
                leftovers = [(p, t) for p, t in arrived.items() if p > now_at]
                state.pending = leftovers + state.pending
                if now_at == cursor:
                    # Not readable yet: wait for the next arrival or the head check.
                    break
                if not state.pending:
                    break
        except Exception:
            log.exception("gap fill of %s on %s failed", key, conn.id)


async def replay(
    conn: Connection,
    key: str,
    after: int,
    limit: int,
    head: int,
    read_range: RangeReader,
) -> tuple[int, int, bool]:
    """Send up to `limit` stored frames after `after` that this socket was not sent.

    A socket gets each message once (PROTOCOL 6). A `sync` that comes after live
    messages started (a client whose `sync` arrived after the resume window, or
    that syncs again) gets what it misses below them, oldest first, and is not
    sent again what it already has; only then is a socket's order not strictly
    increasing, since losing those messages would be worse.
    Returns (replayed, cursor, complete). When more than `limit` remain, the
    cursor moves to `head` so live frames continue, and the client pages the
    rest with `history` (PROTOCOL 6, `complete: false`).
    """
    state = sequence_state(conn, key)
    async with state.lock:
        # Live frames may have moved the cursor past the head read before the lock.
        cursor = conn.cursors.get(key, head)
        head = max(head, cursor)
        after = min(after, head)
        if after > cursor:  # the client holds these already (another socket)
            _skip_to(conn, key, after)
            cursor = after
        runs = conn.sent_runs.setdefault(key, SentRuns(cursor))
        budget, replayed = limit, 0
        holes = runs.unsent(after, cursor)
        for lo, hi in holes:
            upto = min(hi, lo + budget)
            if upto <= lo or key not in conn.cursors:
                break
            for _, text in await read_range(key, lo, upto):
                await conn.send_text(text)
                replayed += 1
            runs.add(lo, upto)
            budget -= upto - lo
        missing = sum(hi - lo for lo, hi in holes) + head - cursor
        if budget > 0 and key in conn.cursors:
            upto = min(head, cursor + budget)
            await _send_next(conn, key, await read_range(key, cursor, upto))
            replayed += conn.cursors.get(key, cursor) - cursor
        complete = missing <= limit
        if not complete and key in conn.cursors and conn.cursors[key] < head:
            _skip_to(conn, key, head)
    if state.pending:
        await catch_up(conn, key, read_range)
    return replayed, conn.cursors.get(key, head), complete
