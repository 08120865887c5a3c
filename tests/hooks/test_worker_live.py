"""Delivery workers (`OUTBOX_DELIVERY=worker`, `manage.py deliver_outbox`): the nodes
only write the outbox; worker processes send it, any number at once, one killed
with SIGKILL losing nothing (docs/webhooks.md, "A delivery worker")."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.chat import group, person, send
from tests.support.live import ROOT, DaphneNode, Stack, manage
from tests.support.receiver import SECRET, Receiver

pytestmark = pytest.mark.timeout(180)

# The node's own poll is 1 s and its commits wake it at once: two polls without a
# request show it sends nothing.
QUIET_SECONDS = 2.5


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def hooked(receiver: Receiver) -> dict[str, str]:
    return {
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "OUTBOX_DELIVERY": "worker",
        "WEBHOOK_TIMEOUT": "3",
    }


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    workers: list[subprocess.Popen[str]] = []

    def start(stack: Stack, receiver: Receiver) -> subprocess.Popen[str]:
        log = open(tmp_path / f"worker-{len(workers)}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "deliver_outbox", "--poll", "0.2"],
            cwd=ROOT,
            env=stack.env(**hooked(receiver)),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        workers.append(proc)
        return proc

    yield start
    for proc in workers:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def wait(receiver: Receiver, check, timeout: float, what: str):
    return await asyncio.to_thread(receiver.wait_for, check, timeout, what)


def seqs(receiver: Receiver, cid: str) -> list[int]:
    return [
        e["data"]["seq"]
        for e in receiver.events("conversation.event")
        if e["data"]["conversation"] == cid
    ]


async def test_nodes_write_and_a_worker_sends_then_stops_on_sigterm(
    stack: Stack, make_node: Callable[..., DaphneNode], receiver: Receiver, start_worker
) -> None:
    node = make_node(stack, **hooked(receiver))
    alice, bob = person(node), person(node)
    cid = group(node, alice, bob)
    ws = await alice.socket(node)
    for n in range(5):
        await send(ws, cid, f"m{n}")
    # The node sends nothing of what it wrote.
    with pytest.raises(AssertionError, match="timed out"):
        await wait(receiver, lambda r: r.requests, QUIET_SECONDS, "a request from the node")

    worker = start_worker(stack, receiver)
    await wait(receiver, lambda r: seqs(r, cid) == [1, 2, 3, 4, 5], 60, "the worker's deliveries")
    # New events reach the running worker through its poll.
    await send(ws, cid, "later")
    await wait(receiver, lambda r: seqs(r, cid) == [1, 2, 3, 4, 5, 6], 30, "the later one")
    assert all(r.signed for r in receiver.requests)
    assert sum(1 for e in receiver.events() if e["type"] == "member.joined") == 2
    await ws.close()

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0


async def test_two_workers_one_killed_during_delivery_lose_nothing(
    production_stack: Stack,
    make_node: Callable[..., DaphneNode],
    receiver: Receiver,
    start_worker,
) -> None:
    node = make_node(production_stack, **hooked(receiver))
    people = [person(node) for _ in range(3)]
    conversations = [group(node, people[0], *people[1:]) for _ in range(4)]
    sockets = [await p.socket(node) for p in people]
    for n in range(10):
        for i, cid in enumerate(conversations):
            await send(sockets[i % 3], cid, f"{i}:{n}")
    receiver.hang = 1.0  # requests in flight for a while in both workers
    first, second = (
        start_worker(production_stack, receiver),
        start_worker(production_stack, receiver),
    )
    await wait(
        receiver,
        lambda r: len([x for x in r.requests if x.event["type"] == "conversation.event"]) >= 2,
        30,
        "deliveries under way",
    )
    first.kill()
    receiver.hang = 0.0
    await wait(
        receiver,
        lambda r: all(seqs(r, cid) == list(range(1, 11)) for cid in conversations),
        90,
        "every message, in order, from the surviving worker",
    )
    assert second.poll() is None
    for ws in sockets:
        await ws.close()


def test_a_bad_poll_is_refused(embedded_stack: Stack) -> None:
    done = manage(embedded_stack.env(), "deliver_outbox", "--poll", "0", check=False)
    assert done.returncode != 0
    assert "--poll must be above 0" in done.stderr
