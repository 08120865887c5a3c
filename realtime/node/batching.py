"""Group commit on a node: calls that arrive while a batch runs form the next batch.

Under light load a batch holds one call and costs what a lone call costs;
under load batches grow by themselves, so the thread hops and database round
trips per call fall as the rate rises (no timer, no waiting for a batch to
fill). Sends (`send_queue`), token checks and socket records at the handshake
(`accounts.ws_auth`, `registry`) go through one each per node.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RunBatch = Callable[[list[T]], Awaitable[list[R]]]


class Batcher(Generic[T, R]):
    """`submit(item)` waits for the batch holding `item`; one batch runs at a time.

    `run` gets the items in arrival order and returns one result per item; if it
    raises, every call of that batch raises the same error. Bound to the event
    loop of its first use (tests run one loop per test: a new loop starts afresh).
    """

    _all: weakref.WeakSet[Batcher] = weakref.WeakSet()

    def __init__(self, run: RunBatch[T, R], max_batch: int = 256) -> None:
        Batcher._all.add(self)
        self._run = run
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Calls queued for the next batch (the node's figures)."""
        return len(self._waiting)

    @classmethod
    def waiting_everywhere(cls) -> int:
        """Calls queued in every batcher of the process (sends, token checks, admissions)."""
        return sum(b.waiting for b in list(cls._all))

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._waiting, self._task = loop, [], None
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # the caller may have gone meanwhile
                    future.set_result(result)
