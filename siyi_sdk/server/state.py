"""Server state that may one day cross processes, behind small interfaces.

Today: the at-most-once response cache (PROTOCOL.md §6). `MemoryResponseCache` is the default;
a shared implementation (Redis) is a second class with the same two methods.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from ..errors import SiyiError
from ..packets import Response

__all__ = ["MemoryResponseCache", "ResponseCache"]

CacheKey = tuple[Hashable, str]
"""(peer identity, request id): the identity is the session when there is one, else None."""


class ResponseCache(ABC):
    """Runs each (identity, request id) at most once and remembers its Response for a while."""

    @abstractmethod
    async def run_once(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        """Return the Response for `key`, running `compute` only if it never ran.

        A repeat while the first run is still going waits for it; a repeat after it finished
        gets the remembered Response until it expires.
        """

    @abstractmethod
    def __len__(self) -> int:
        """The number of entries held (running and finished)."""


class MemoryResponseCache(ResponseCache):
    """The in-process response cache.

    Args:
        ttl: seconds a finished Response is remembered.
        max_entries: finished Responses kept at most; the oldest go first.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        ttl: float = 60.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._running: dict[CacheKey, asyncio.Future[Response]] = {}
        # Ordered by completion time, so expired entries are always at the front.
        self._done: OrderedDict[CacheKey, tuple[float, Response]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    def _purge(self, now: float) -> None:
        done = self._done
        while done:
            key, (expires, _) = next(iter(done.items()))
            if expires > now and len(done) <= self.max_entries:
                break
            del done[key]

    async def run_once(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        """See `ResponseCache.run_once`."""
        now = self._clock()
        self._purge(now)
        hit = self._done.get(key)
        if hit is not None:
            return hit[1]
        running = self._running.get(key)
        if running is not None:
            # shield: a repeat that gives up waiting must not cancel the first run's future.
            return await asyncio.shield(running)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            response = await compute()
        except BaseException as exc:
            # The run never finished (the server is stopping): waiters learn it, and a later
            # repeat may run it again since it never completed.
            if not future.done():
                future.set_exception(SiyiError(f"the request was interrupted: {exc!r}"))
                future.exception()  # mark retrieved: nobody may be waiting
            raise
        finally:
            del self._running[key]
        future.set_result(response)
        now = self._clock()
        self._done[key] = (now + self.ttl, response)
        self._purge(now)  # keep the bound after adding, not only before the next call
        return response
