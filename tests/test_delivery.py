"""Delivery cursors: whatever the layer does (lose, repeat, reorder), each once, in order."""

from __future__ import annotations

import asyncio
import random

import pytest

from realtime import delivery
from realtime.connection import Connection
from realtime.ratelimit import TokenBucket
from realtime.registry import ConnectionInfo

STORE = {n: f"m{n}" for n in range(1, 201)}


def make_conn(sent: list[int]) -> Connection:
    async def send_text(text: str) -> None:
        sent.append(int(text[1:]))

    async def nothing(*_: object) -> None:
        return None

    info = ConnectionInfo("c", "n", 1, "chat", "chan", "", "", "token", "token:1")
    return Connection(info, "u", TokenBucket(1, 1, 0), nothing, send_text, nothing)


async def read_range(key: str, after: int, upto: int) -> list[tuple[int, str]]:
    await asyncio.sleep(0.001)  # a real store answers later
    return [(n, STORE[n]) for n in range(after + 1, upto + 1)]


async def settle(conn: Connection) -> None:
    for state in conn.streams.values():
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
    await asyncio.sleep(0)  # the sync has started: it holds the stream
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


async def test_head_check_finds_a_lost_tail() -> None:
    sent: list[int] = []
    conn = make_conn(sent)
    delivery.start(conn, "k", 0)
    await delivery.deliver(conn, "k", 1, "m1", read_range)
    # 2 and 3 were lost by the layer and nothing followed them
    await delivery.catch_up(conn, "k", read_range, head=3)
    assert sent == [1, 2, 3]
