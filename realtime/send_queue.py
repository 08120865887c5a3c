"""Group commit on a node: sends that arrive while a batch is being stored go in the next.

Under light load a batch holds one send and costs what a lone send costs;
under heavy load batches grow by themselves, so the database round trips per
send fall as the rate rises (no timer, no waiting for a batch to fill). Each
batch is published before its sends are acknowledged, one hub message per
conversation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from monitoring import metrics
from realtime import fanout, message_batch, messages
from realtime.db import in_pool
from realtime.messages import Sent

if TYPE_CHECKING:  # message_batch → metrics → runtime → here: names only at runtime
    from realtime.message_batch import Result, SendRequest

log = logging.getLogger("tether.sends")

# Bounded so one transaction stays short and its statement within any driver's limits.
MAX_BATCH = 256

Store = Callable[[list["SendRequest"]], Awaitable[list["Result"]]]


async def store_in_pool(requests: list[SendRequest]) -> list[Result]:
    """`message_batch.store_sends` on a pool thread (bound at call time: import cycle)."""
    return await in_pool(message_batch.store_sends)(requests)


async def publish_batch(results: list[Result]) -> None:
    """Tell every node about the new messages of a batch, per conversation in seq order."""
    by_conversation: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for result in results:
        if isinstance(result, Sent) and not result.duplicate:
            m = result.message
            by_conversation[m.conversation_id].append((m.seq, messages.encoded_frame(m)))
    if by_conversation:
        await fanout.publish_many_conversations(
            {cid: sorted(items) for cid, items in by_conversation.items()}
        )


Publish = Callable[[list["Result"]], Awaitable[None]]
Batch = list[tuple["SendRequest", "asyncio.Future[Result]"]]


class SendQueue:
    """One per node and event loop: `send` waits for its batch to be stored and published.

    One batch at a time: while the machine is busy, the sends waiting behind a
    batch make the next one bigger and cheaper per send. (Storing the next
    batch while the previous one publishes was measured: smaller batches, more
    CPU per send, and worse latency at 1,000 msg/s.)
    """

    def __init__(
        self,
        store: Store = store_in_pool,
        publish: Publish = publish_batch,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._store = store
        self._publish = publish
        self._max_batch = max_batch
        self._waiting: Batch = []
        self._task: asyncio.Task[None] | None = None

    async def send(self, request: SendRequest) -> Sent:
        """Store (or find) this send; raises the protocol error to answer."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        result = await future
        if isinstance(result, Exception):
            raise result
        return result

    async def _drain(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            metrics.SEND_BATCH_SIZE.observe(len(batch))
            try:
                results = await self._store([request for request, _ in batch])
                await self._publish(results)
            except Exception as error:
                _fail(batch, error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # the sender's socket may have gone meanwhile
                    future.set_result(result)


def _fail(batch: Batch, error: Exception) -> None:
    """Nothing of the batch is acknowledged: each sender gets `internal` and sends
    again with the same key (stored or not, never twice)."""
    log.error("storing or publishing a batch of %d sends failed", len(batch), exc_info=error)
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
