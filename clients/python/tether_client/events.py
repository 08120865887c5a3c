"""Events to the application: callbacks, or async iterators that buffer from the
moment they are opened (so nothing between opening and reading is missed)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("tether_client")


@dataclass(frozen=True)
class Event:
    """`type` names it (`message`, `ack`, `state`, …); `data` is its detail."""

    type: str
    data: Any = field(default=None)


class EventStream:
    """Events of some types (all when none named) from its creation on.

    `async for event in stream`, or `await stream.next(type, where, timeout)` to skip
    to the first event that matches.
    """

    def __init__(self, hub: EventHub, types: Iterable[str]) -> None:
        self._hub = hub
        self.types = frozenset(types)
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def _put(self, event: Event) -> None:
        if not self.types or event.type in self.types:
            self._queue.put_nowait(event)

    async def get(self, timeout: float | None = None) -> Event:
        event = await asyncio.wait_for(self._queue.get(), timeout)
        if event is None:
            self._queue.put_nowait(None)  # stay closed for later calls
            raise StopAsyncIteration
        return event

    async def next(
        self,
        type: str | None = None,
        where: Callable[[Any], bool] | None = None,
        timeout: float | None = 10,
    ) -> Event:
        """The next event of `type` whose data passes `where`; others are skipped.
        Raises TimeoutError after `timeout` seconds in all."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.get()
                if (type is None or event.type == type) and (where is None or where(event.data)):
                    return event

    def pending(self) -> list[Event]:
        """What arrived and was not read yet, without waiting."""
        found = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if event is None:
                self._queue.put_nowait(None)
                break
            found.append(event)
        return found

    def close(self) -> None:
        self._hub._streams.discard(self)
        self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self.get()


class EventHub:
    """Fans each event out to the callbacks and the open streams."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[Any], Any]]] = {}
        self._streams: set[EventStream] = set()
        self._tasks: set[asyncio.Future] = set()

    def on(self, type: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Call `callback(data)` (a function or a coroutine function) for every event
        of `type` (`"*"`: every event, called with the `Event`); returns an undo."""
        self._callbacks.setdefault(type, []).append(callback)
        return lambda: self._callbacks.get(type, []).remove(callback)

    def stream(self, *types: str) -> EventStream:
        stream = EventStream(self, types)
        self._streams.add(stream)
        return stream

    def emit(self, type: str, data: Any = None) -> None:
        event = Event(type, data)
        for stream in list(self._streams):
            stream._put(event)
        calls = [(cb, data) for cb in self._callbacks.get(type, [])]
        calls += [(cb, event) for cb in self._callbacks.get("*", [])]
        for callback, arg in calls:
            try:
                result = callback(arg)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    # The loop keeps only weak references to tasks: hold them here.
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    task.add_done_callback(_log_failure)
            except Exception:
                # The application's bug must not take the socket down with it.
                log.exception("tether_client: %s callback failed", type)

    def close(self) -> None:
        for stream in list(self._streams):
            stream.close()


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("tether_client: async callback failed", exc_info=task.exception())
