"""Group commit of sends (`node/batching.py`): sends that arrive while a batch is
being stored go in the next. Each batch is published before its sends are
acknowledged, one hub message per conversation, through chat/events.py.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from monitoring import metrics
from realtime.chat import events, messages, sends
from realtime.chat.messages import Sent
from realtime.chat.sends import Result, SendRequest
from realtime.node.batching import Batcher
from realtime.node.db import in_pool

log = logging.getLogger("tether.sends")

# Bounded so one transaction stays short and its statement within any driver's limits.
MAX_BATCH = 256

Store = Callable[[list[SendRequest]], Awaitable[list[Result]]]


async def store_in_pool(requests: list[SendRequest]) -> list[Result]:
    """`sends.store_sends` on a pool thread (docs/architecture.md, rule 7)."""
    return await in_pool(sends.store_sends)(requests)


async def publish_batch(results: list[Result]) -> None:
    """Tell every node about the new messages of a batch, per conversation in seq order."""
    by_conversation: dict[str, list[tuple[int, str]]] = defaultdict(list)
    stored = []
    for result in results:
        if isinstance(result, Sent) and not result.duplicate:
            m = result.message
            stored.append(m)
            by_conversation[m.conversation_id].append((m.seq, messages.encoded_frame(m)))
    if by_conversation:
        await events.messages_stored({cid: sorted(items) for cid, items in by_conversation.items()})
        await events.messages_signalled(stored)


Publish = Callable[[list[Result]], Awaitable[None]]


class SendQueue:
    """One per node and event loop: `send` waits for its batch to be stored and published.

    One batch at a time (`batching.Batcher`): while the machine is busy, the
    sends waiting behind a batch make the next one bigger and cheaper per send.
    (Storing the next batch while the previous one publishes was measured twice:
    smaller batches, more CPU per send, and worse latency at 1,000 msg/s.)
    """

    def __init__(
        self,
        store: Store = store_in_pool,
        publish: Publish = publish_batch,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._store = store
        self._publish = publish
        self._batches: Batcher[SendRequest, Result] = Batcher(self._store_and_publish, max_batch)

    @property
    def waiting(self) -> int:
        """Sends queued for the next batch (the node's figures)."""
        return self._batches.waiting

    async def send(self, request: SendRequest) -> Sent:
        """Store (or find) this send; raises the protocol error to answer."""
        result = await self._batches.submit(request)
        if isinstance(result, Exception):
            raise result
        return result

    async def _store_and_publish(self, requests: list[SendRequest]) -> list[Result]:
        metrics.SEND_BATCH_SIZE.observe(len(requests))
        try:
            results = await self._store(requests)
            await self._publish(results)
        except Exception:
            # Nothing of the batch is acknowledged: each sender gets `internal` and
            # sends again with the same key (stored or not, never twice).
            log.exception("storing or publishing a batch of %d sends failed", len(requests))
            raise
        return results
