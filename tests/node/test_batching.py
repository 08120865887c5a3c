"""`batching.Batcher`: group commit of calls that arrive together."""

from __future__ import annotations

import asyncio

import pytest

from realtime.node.batching import Batcher


async def test_calls_arriving_during_a_batch_form_the_next_one() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await release.wait()  # the first batch is slow: the others queue behind it
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(run, max_batch=3)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40, 50]
    assert batches == [[0], [1, 2, 3], [4, 5]]


async def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_runs() -> None:
    async def run(items: list[str]) -> list[str]:
        if "bad" in items:
            raise RuntimeError("database down")
        return items

    batcher: Batcher[str, str] = Batcher(run)
    results = await asyncio.gather(
        batcher.submit("bad"), batcher.submit("ok"), return_exceptions=True
    )
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert await batcher.submit("fine") == "fine"


def test_a_new_event_loop_starts_afresh() -> None:
    async def never(items: list[int]) -> list[int]:
        await asyncio.sleep(3600)
        return items

    async def quick(items: list[int]) -> list[int]:
        return items

    batcher: Batcher[int, int] = Batcher(never)

    pending: list[asyncio.Future[int]] = []

    async def abandon() -> None:
        pending.append(asyncio.ensure_future(batcher.submit(1)))
        await asyncio.sleep(0.01)

    old = asyncio.new_event_loop()
    old.run_until_complete(abandon())
    old.close()  # its batch never finishes, nor is it cancelled (a test's loop, gone)
    for task in (batcher._task, pending[0]):  # abandoned on purpose: no warning at exit
        task._log_destroy_pending = False  # type: ignore[union-attr]
    batcher._run = quick  # type: ignore[method-assign]
    assert asyncio.run(asyncio.wait_for(batcher.submit(2), 5)) == 2
    assert not pending[0].done()


@pytest.mark.parametrize("count", [1, 300])
async def test_every_caller_gets_its_own_result(count: int) -> None:
    async def run(items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return [-i for i in items]

    batcher: Batcher[int, int] = Batcher(run)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(count))) == [
        -i for i in range(count)
    ]
