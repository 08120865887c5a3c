"""Delivery cursors: whatever the layer does (lose, repeat, reorder), each once, in order."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from realtime.node import delivery
from realtime.node.connection import Connection
from realtime.node.ratelimit import TokenBucket
from realtime.node.registry import ConnectionInfo

STORE = {n: f"m{n}" for n in range(1, 201)}


def make_conn(sent: list[int]) -> Connection:
    async def send_text(text: str) -> None:
        sent.append(int(text[1:]))

    async def nothing(*_: object) -> None:
        return None

    info = ConnectionInfo("c", "n", 1, "chat", "chan", "", "", "token", "token:1")
    return Connection(
        info, "u", TokenBucket(1, 1, 0), nothing, send_text, nothing, control=lambda _: None
    )


async def read_range(key: str, after: int, upto: int) -> list[tuple[int, str]]:
    await asyncio.sleep(0.001)  # a real store answers later
    return [(n, STORE[n]) for n in range(after + 1, upto + 1)]


async def settle(conn: Connection) -> None:
    for state in conn.sequences.values():
        if state.filler is not None:
            await asyncio.wait_for(asyncio.shield(state.filler), 5)


@pytest.mark.parametrize("seed", range(5))
async def test_lost_repeated_and_reordered_frames_come_out_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    arrivals = [n for n in range(1, 201) if rng.random() > 0.2]  # ~20% lost
    arrivals += rng.sample(arrivals, 30)  # repeats
    rng.shuffle(arrivals)  # reordered
    arrivals.append(200)  # the last one made it (or the head check finds it)
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 0)
    for n in arrivals:
        await delivery.deliver(conn, "k", n, STORE[n], read_range)
    await settle(conn)
    assert sent == list(range(1, 201))


async def test_replay_with_live_arrivals_in_between() -> None:
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 150)
    replay = asyncio.create_task(delivery.replay(conn, "k", 100, 500, 150, read_range))
    await asyncio.sleep(0)  # the sync has started: it holds the sequence
    for n in (151, 152, 154, 153):
        await delivery.deliver(conn, "k", n, STORE[n], read_range)
        await asyncio.sleep(0)
    replayed, _, complete = await replay
    assert replayed == 50 and complete
    await settle(conn)
    assert sent == list(range(101, 155))


async def test_replay_over_the_limit_is_incomplete_and_moves_to_the_head() -> None:
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 0)
    replayed, cursor, complete = await delivery.replay(conn, "k", 10, 5, 100, read_range)
    assert (replayed, cursor, complete) == (5, 100, False)
    assert sent == [11, 12, 13, 14, 15]
    await delivery.deliver(conn, "k", 101, "m101", read_range)
    assert sent[-1] == 101


async def test_holding_until_release_keeps_order() -> None:
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 10)
    delivery.hold(conn)
    for n in (11, 13, 12):
        await delivery.deliver(conn, "k", n, STORE[n], read_range)
    assert sent == []
    delivery.release(conn, read_range)
    await settle(conn)
    assert sent == [11, 12, 13]


async def test_a_head_check_while_holding_waits_for_the_sync() -> None:
    """The node's periodic head check must not end a socket's resume window: what
    it sent would come before the replay, and again inside it."""
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 20)
    delivery.hold(conn)
    await delivery.deliver(conn, "k", 22, STORE[22], read_range)
    await delivery.catch_up(conn, "k", read_range, head=22)
    assert sent == []
    replayed, cursor, complete = await delivery.replay(conn, "k", 15, 500, 22, read_range)
    delivery.release(conn, read_range)
    await settle(conn)
    assert (replayed, cursor, complete) == (7, 22, True)
    assert sent == list(range(16, 23))


async def test_a_late_sync_gets_what_it_misses_below_the_live_messages_once() -> None:
    """The client's `sync` came after the resume window: 11 to 13 went out live. It
    gets 1 to 10 (oldest first), then the rest; nothing twice, nothing lost."""
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 10)
    for n in (11, 12, 13):
        await delivery.deliver(conn, "k", n, STORE[n], read_range)
    assert await delivery.replay(conn, "k", 0, 500, 15, read_range) == (12, 15, True)
    assert sent == [11, 12, 13, *range(1, 11), 14, 15]
    # Syncing again, from anywhere, sends nothing twice.
    assert await delivery.replay(conn, "k", 3, 500, 15, read_range) == (0, 15, True)
    await delivery.deliver(conn, "k", 16, STORE[16], read_range)
    assert sent == [11, 12, 13, *range(1, 11), 14, 15, 16]


@pytest.mark.parametrize("seed", range(20))
async def test_any_run_of_syncs_and_live_messages_sends_each_once_and_loses_none(
    seed: int,
) -> None:
    rng = random.Random(seed)
    sent: list[int] = []
    conn = make_conn(sent)
    head = rng.randrange(0, 40)
    delivery.start(conn, "k", head)
    if rng.random() < 0.5:
        delivery.hold(conn)
    claimed: set[int] = set()  # what the client said it has (from elsewhere)
    for _ in range(12):
        step = rng.random()
        if step < 0.5 and head < 200:
            head += 1
            await delivery.deliver(conn, "k", head, STORE[head], read_range)
        elif step < 0.9:
            position = rng.randrange(0, head + 3)
            limit = rng.choice([500, 500, 7])
            before = len(sent)
            replayed, cursor, complete = await delivery.replay(
                conn, "k", position, limit, head, read_range
            )
            assert replayed == len(sent) - before <= limit and cursor >= head
            if complete:
                # Everything after the position is there, sent here or claimed.
                missing = set(range(position + 1, head + 1)) - set(sent) - claimed
                assert not missing, (position, head, sorted(missing))
            claimed |= set(range(min(position, head) + 1))
        else:
            delivery.release(conn, read_range)
        await settle(conn)
        assert len(sent) == len(set(sent)), sent  # never twice
    delivery.release(conn, read_range)
    await settle(conn)
    assert len(sent) == len(set(sent)), sent
    runs = conn.sent_runs["k"].closed  # kept merged: as short as the holes allow
    assert all(a[1] < b[0] for a, b in itertools.pairwise(runs)), runs


async def test_a_sync_after_an_incomplete_one_fills_only_the_rest() -> None:
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 100)
    assert await delivery.replay(conn, "k", 0, 5, 100, read_range) == (5, 100, False)
    assert await delivery.replay(conn, "k", 0, 500, 100, read_range) == (95, 100, True)
    assert sent == list(range(1, 101))


async def test_head_check_finds_a_lost_tail() -> None:
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 0)
    await delivery.deliver(conn, "k", 1, "m1", read_range)
    # 2 and 3 were lost by the layer and nothing followed them
    await delivery.catch_up(conn, "k", read_range, head=3)
    assert sent == [1, 2, 3]


async def test_lossy_streams_skip_what_the_store_no_longer_holds() -> None:
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "t", 0)

    async def trimmed(key: str, after: int, upto: int) -> list[tuple[int, str]]:
        return [(n, STORE[n]) for n in range(max(after + 1, 6), upto + 1)]  # 1-5 trimmed

    await delivery.deliver(conn, "t", 8, STORE[8], trimmed, lossy=True)
    await settle(conn)
    assert sent == [6, 7, 8]
    await delivery.deliver(conn, "t", 9, STORE[9], trimmed, lossy=True)
    assert sent == [6, 7, 8, 9]


class FakeProtocol:
    STATE_OPEN = 3

    def __init__(self) -> None:
        self.state = 3
        self._perMessageCompress = None
        self.written: list[bytes] = []
        self.transport = self

    def write(self, data: bytes) -> None:
        self.written.append(data)


async def test_deliver_all_frames_once_and_writes_the_same_bytes_to_each_ready_socket() -> None:
    from realtime.transport.backpressure import DaphneOutbound, text_frame

    conns, protocols, sent = [], [], []
    for _ in range(3):
        conn = make_conn(sent)
        protocol = FakeProtocol()
        conn.outbound = DaphneOutbound(protocol, 10, 10_000, conn.send_text)
        delivery.start(conn, "k", 4)
        conns.append(conn)
        protocols.append(protocol)
    delivery.start(conns[2], "k", 2)  # behind: must be filled from the store first
    await delivery.deliver_all(conns, "k", 5, STORE[5], read_range)
    await settle(conns[2])
    assert protocols[0].written == protocols[1].written == [text_frame(STORE[5])]
    assert protocols[0].written[0] is protocols[1].written[0]  # framed once
    assert protocols[2].written == [] and sent == [3, 4, 5]  # the slow path, in order
    # Transport full: not written past it, but handed to the socket's own send (which
    # queues it in the bounded outbound queue, see the consumer's send_text).
    conns[0].outbound.pauseProducing()
    await delivery.deliver_all(conns[:1], "k", 6, STORE[6], read_range)
    assert protocols[0].written == [text_frame(STORE[5])] and sent[-1] == 6


def test_text_frames_carry_the_length_in_rfc_6455_form() -> None:
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from realtime.transport.backpressure import text_frame

    for text in ("x", "é" * 100, "y" * 70_000):
        reader = StreamReader()
        reader.feed_data(text_frame(text))
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frame = done.value
        assert frame.opcode == Opcode.TEXT and frame.fin and frame.data.decode() == text


async def test_a_run_of_messages_goes_out_in_one_write_per_ready_socket() -> None:
    from realtime.transport.backpressure import DaphneOutbound, text_frame

    conns, protocols, sent = [], [], []
    for start in (4, 4, 5, 2):
        conn = make_conn(sent)
        protocol = FakeProtocol()
        conn.outbound = DaphneOutbound(protocol, 10, 10_000, conn.send_text)
        delivery.start(conn, "k", start)
        conns.append(conn)
        protocols.append(protocol)
    run = [(5, STORE[5]), (6, STORE[6]), (7, STORE[7])]
    await delivery.deliver_run(conns, "k", run, read_range)
    await settle(conns[3])
    both = text_frame(STORE[5]) + text_frame(STORE[6]) + text_frame(STORE[7])
    assert protocols[0].written == protocols[1].written == [both]  # one write each
    # Already past 5: 5 is dropped as a repeat, 6 and 7 still go out in order.
    assert protocols[2].written == [] and sent[:2] == [6, 7]
    assert [c.cursors["k"] for c in conns] == [7, 7, 7, 7]
    assert protocols[3].written == [] and sent[-5:] == [3, 4, 5, 6, 7]  # filled from the store


async def test_a_client_that_keeps_skipping_ahead_keeps_a_bounded_record() -> None:
    """Each sync above the cursor leaves a hole; the record of runs stays bounded, and a
    sync afterwards still sends nothing twice."""
    store = {n: f"m{n}" for n in range(1, 2001)}

    async def read(key: str, after: int, upto: int) -> list[tuple[int, str]]:
        return [(n, store[n]) for n in range(after + 1, upto + 1)]

    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 0)
    for step in range(200):
        base = step * 10
        await delivery.deliver(conn, "k", base + 1, store[base + 1], read)
        # The client says it holds up to base + 5 (another socket): a hole of 3.
        await delivery.replay(conn, "k", base + 5, 500, base + 5, read)
    assert len(conn.sent_runs["k"].closed) <= delivery.MAX_SENT_RUNS < 200  # 200 holes made
    sent_before = list(sent)
    await delivery.replay(conn, "k", 0, 10_000, 2000, read)
    again = sent[len(sent_before) :]
    assert not set(again) & set(sent_before), "a message was sent twice"
    assert len(again) == len(set(again))
