"""Server state that may one day cross processes, behind small interfaces.

Today: the at-most-once response cache (PROTOCOL.md §6). `MemoryResponseCache` is the default;
a shared implementation (Redis) is a second class with the same two methods.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

from ..errors import SiyiError
from ..packets import Response, kept, parse_message
from ..peer import encode_response

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

    Finished Responses are remembered for `ttl` seconds (rounded up to a slice of at most a
    second), at most `max_entries` of them, the oldest leaving first.

    It sits on every request's path, so it is built to cost the garbage collector nothing:
    keys are strings and Responses are kept encoded (neither is tracked by the cyclic
    collector), and expiry is tracked per time slice rather than per entry. Keeping a
    hundred thousand models and tuples alive instead more than doubled the server's CPU cost
    per request, all of it spent in collections walking over them.

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
        self._slice = min(1.0, ttl / 16) if ttl > 0 else 0.0
        # Running entries hold the futures of repeats waiting for them: a list made only for
        # the first repeat, so the common case (no repeat) allocates nothing per request.
        self._running: dict[str, list[asyncio.Future[Response]] | None] = {}
        self._done: dict[str, bytes] = {}
        # (slice start, keys finished in it), oldest first.
        self._slices: deque[tuple[float, deque[str]]] = deque()

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    @staticmethod
    def _key(key: CacheKey) -> str:
        identity, request_id = key
        return f"{identity or ''}\x1f{request_id}"

    def _expire(self, now: float) -> None:
        slices, done = self._slices, self._done
        while slices and slices[0][0] + self._slice + self.ttl <= now:
            for key in slices.popleft()[1]:
                done.pop(key, None)
        while len(done) > self.max_entries and slices:
            keys = slices[0][1]
            done.pop(keys.popleft(), None)
            if not keys:
                slices.popleft()

    def _remember(self, key: str, frame: bytes, now: float) -> None:
        self._done[key] = frame
        slices = self._slices
        if not slices or now >= slices[-1][0] + self._slice:
            slices.append((now, deque()))
        slices[-1][1].append(key)
        self._expire(now)

    async def run_once(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        """See `ResponseCache.run_once`."""
        skey = self._key(key)
        self._expire(self._clock())
        frame = self._done.get(skey)
        if frame is not None:
            answer = parse_message(frame)
            assert isinstance(answer, Response)
            return answer
        if skey in self._running:
            future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            waiting = self._running[skey]
            if waiting is None:
                waiting = self._running[skey] = []
            waiting.append(future)
            return await future
        self._running[skey] = None
        try:
            response = await compute()
        except BaseException as exc:
            # The run never finished (the server is stopping): waiters learn it, and a later
            # repeat may run it again since it never completed.
            for future in self._running.pop(skey) or ():
                if not future.done():
                    future.set_exception(SiyiError(f"the request was interrupted: {exc!r}"))
            raise
        for future in self._running.pop(skey) or ():
            if not future.done():
                future.set_result(response)
        self._remember(skey, kept(encode_response(response)), self._clock())
        return response
