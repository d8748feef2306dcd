"""Time limits of many waiting futures, kept with one timer.

A timer handle per request (`loop.call_later` and its `cancel`) costs about 3 µs on CPython
3.11 and a heap push and pop in the event loop's own schedule; on a client's hot path that is a
tenth of a request. `Expiry` keeps the limits in its own heap, arms one timer for the earliest
future still waiting, and forgets answered futures lazily: it never walks them on the way in.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from typing import Any

__all__ = ["Expired", "Expiry"]

_COMPACT_FLOOR = 1024


class Expired(Exception):
    """Set on a future whose time ran out (the waiter turns it into its own error)."""


class Expiry:
    """Fails each added future with `Expired` once its time is up, unless it is done first.

    Memory stays proportional to the futures still waiting: when answered ones make up most
    of the heap, it is rebuilt without them (amortised O(1) per `add`).
    """

    __slots__ = ("_armed_at", "_compact_at", "_heap", "_order", "_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[Any]]] = []
        self._order = itertools.count()  # ties never compare futures
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf
        self._compact_at = _COMPACT_FLOOR

    @property
    def size(self) -> int:
        """Futures held: those waiting, and answered ones not forgotten yet."""
        return len(self._heap)

    def add(self, future: asyncio.Future[Any], timeout: float) -> None:
        """Fail `future` with `Expired` `timeout` seconds from now if it is still pending."""
        loop = future.get_loop()
        when = loop.time() + timeout
        heap = self._heap
        heapq.heappush(heap, (when, next(self._order), future))
        if when < self._armed_at:
            self._arm(loop, when)
        if len(heap) >= self._compact_at:
            self._compact()

    def clear(self) -> None:
        """Forget every future and stop the timer (their connection is gone)."""
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire, loop)
        self._armed_at = when

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._armed_at = math.inf
        heap = self._heap
        now = loop.time()
        # Answered futures at the head go too, due or not: the next timer is then set for
        # the oldest future still waiting, not for every answered one in between.
        while heap and (heap[0][2].done() or heap[0][0] <= now):
            _, _, future = heapq.heappop(heap)
            if not future.done():
                future.set_exception(Expired())
        if heap:
            self._arm(loop, heap[0][0])

    def _compact(self) -> None:
        heap = [entry for entry in self._heap if not entry[2].done()]
        heapq.heapify(heap)
        self._heap = heap
        self._compact_at = max(_COMPACT_FLOOR, 2 * len(heap))
