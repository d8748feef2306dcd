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
from typing import Any, ClassVar

from ..errors import SiyiError
from ..outcome import encode_response
from ..packets import Response, StatusCode, kept, parse_message

__all__ = ["GONE_MESSAGE", "MemoryResponseCache", "ResponseCache"]

GONE_MESSAGE = "gone: the request already ran; its answer is no longer kept"
"""The error of the 410 answering a repeat whose answer was let go (PROTOCOL.md §4)."""

_GONE = b""
"""In place of an answer that was let go: no encoded Response is empty."""

CacheKey = tuple[Hashable, str]
"""(peer identity, request id): the identity is the session when there is one, else None."""


class ResponseCache(ABC):
    """Runs each (identity, request id) at most once and remembers its Response for a while."""

    @abstractmethod
    async def run_once(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        """Return the Response for `key`, running `compute` only if it never ran.

        A repeat while the first run is still going waits for it; a repeat after it finished
        gets the remembered Response until it expires. A cache that lets an answer go before
        its time remembers that it ran: a repeat then gets 410 (`StatusCode.GONE`).
        """

    async def run_once_frame(
        self, key: CacheKey, compute: Callable[[], Awaitable[Response]]
    ) -> bytes:
        """`run_once`, answered as the encoded frame to send.

        A cache that keeps answers encoded returns the very bytes it keeps (one encode per
        Response, a repeat sent as it is); this default encodes what `run_once` returns.
        """
        return encode_response(await self.run_once(key, compute))

    def answer_now(
        self, key: CacheKey, run: Callable[..., bytes | Awaitable[Response]], *args: Any
    ) -> bytes | Awaitable[bytes] | None:
        """`run_once_frame` without a coroutine, for a request the caller can answer at once.

        For a key never seen, calls ``run(*args)``: the frame it returns is kept and returned;
        an awaitable it returns is the Response of a run still going (returned: an awaitable of
        its frame). A repeat gets the kept frame. None when only `run_once_frame` can answer
        (the id runs now, its answer was let go, or this cache cannot tell at once): `run` was
        not called. This default always answers None.
        """
        return None

    @abstractmethod
    def __len__(self) -> int:
        """The number of entries held (running and finished)."""


class MemoryResponseCache(ResponseCache):
    """The in-process response cache.

    Finished Responses are remembered for `ttl` seconds (rounded up to a slice of at most a
    second), at most `max_entries` of them and at most `max_bytes` of encoded answers. Past
    either bound the oldest answers are let go before their time, and a marker (the key
    alone) stays in place of each until its time is up: a repeat of that id gets 410, never
    a second run (PROTOCOL.md §4). Markers are bounded too (`max_markers`): past that bound
    the oldest go, and their ids may run again as after `ttl`.

    It sits on every request's path, so it is built to cost the garbage collector nothing:
    keys are strings and Responses are kept encoded (neither is tracked by the cyclic
    collector), and expiry is tracked per time slice rather than per entry. Keeping a
    hundred thousand models and tuples alive instead more than doubled the server's CPU cost
    per request, all of it spent in collections walking over them.

    Args:
        ttl: seconds a finished Response is remembered.
        max_entries: finished Responses kept at most; the oldest go first.
        clock: monotonic seconds (injectable for tests).
        max_bytes: bytes of encoded Responses kept at most; the oldest go first.
        max_markers: markers of answers let go kept at most (default: `max_entries`); each
            costs about 200 bytes (its key, as long as the session key and the request id).
    """

    _run_once_replaced: ClassVar[bool] = False
    """True in a subclass that overrides `run_once`: the frame paths then go through it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._run_once_replaced = cls.run_once is not MemoryResponseCache.run_once

    def __init__(
        self,
        ttl: float = 60.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        max_markers: int | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_markers = max_entries if max_markers is None else max_markers
        self._clock = clock
        self._slice = min(1.0, ttl / 16) if ttl > 0 else 0.0
        # Running entries hold the futures of repeats waiting for them: a list made only for
        # the first repeat, so the common case (no repeat) allocates nothing per request.
        self._running: dict[str, list[asyncio.Future[Response]] | None] = {}
        # Encoded answers, and `_GONE` markers in place of those let go.
        self._done: dict[str, bytes] = {}
        # (slice start, keys finished in it), oldest first.
        self._slices: deque[tuple[float, deque[str]]] = deque()
        # The keys whose answer is kept, oldest first. Answers are let go oldest first, so
        # in the order of `_slices` every marker comes before every answer.
        self._answers: deque[str] = deque()
        self._bytes = 0
        self._markers = 0

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    @property
    def answers(self) -> int:
        """Finished Responses kept now (markers not counted)."""
        return len(self._answers)

    @property
    def markers(self) -> int:
        """Markers kept now, each in place of an answer let go before its time."""
        return self._markers

    @property
    def size(self) -> int:
        """Bytes of encoded Responses kept now."""
        return self._bytes

    @staticmethod
    def _key(key: CacheKey) -> str:
        identity, request_id = key
        return f"{identity or ''}\x1f{request_id}"

    def _expire(self, now: float) -> None:
        slices, done, answers = self._slices, self._done, self._answers
        while slices and slices[0][0] + self._slice + self.ttl <= now:
            for key in slices.popleft()[1]:
                frame = done.pop(key, None)
                if frame:  # an answer, so the oldest one kept
                    answers.popleft()
                    self._bytes -= len(frame)
                elif frame is not None:
                    self._markers -= 1
        while answers and (len(answers) > self.max_entries or self._bytes > self.max_bytes):
            key = answers.popleft()
            self._bytes -= len(done[key])
            done[key] = _GONE
            self._markers += 1
        while self._markers > self.max_markers:
            keys = slices[0][1]  # markers come first: the oldest key is one
            done.pop(keys.popleft(), None)
            self._markers -= 1
            if not keys:
                slices.popleft()

    def _remember(self, key: str, frame: bytes, now: float) -> None:
        self._done[key] = frame
        self._answers.append(key)
        self._bytes += len(frame)
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
            if not frame:  # it ran, and its answer was let go: never run it twice
                return Response.fail(key[1], GONE_MESSAGE, StatusCode.GONE)
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
        return (await self._first_run(skey, compute))[0]

    async def _first_run(
        self, skey: str, compute: Callable[[], Awaitable[Response]]
    ) -> tuple[Response, bytes]:
        """Run `compute` for a key never seen; hand its Response to waiting repeats; keep it.

        Returns:
            The Response and the frame kept for it (encoded once, as an exact-size copy).
        """
        self._running.setdefault(skey, None)  # `answer_now` may have marked it already
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
        frame = kept(encode_response(response))
        self._remember(skey, frame, self._clock())
        return response, frame

    def answer_now(
        self, key: CacheKey, run: Callable[..., bytes | Awaitable[Response]], *args: Any
    ) -> bytes | Awaitable[bytes] | None:
        """See `ResponseCache.answer_now`: dict work only, unless a slice of entries expires."""
        if self._run_once_replaced:
            return None  # a subclass that observes run_once sees every call
        skey = self._key(key)
        done = self._done
        frame = done.get(skey)
        if frame is None:
            if skey in self._running:
                return None
            out = run(*args)
            if type(out) is not bytes:
                assert not isinstance(out, bytes)
                self._running[skey] = None  # running from now: a repeat waits for it
                return self._first_frame(skey, out)
            frame = kept(out)
            self._remember(skey, frame, self._clock())
            return frame
        if frame:
            # A repeat (rare): forget what expired first, so it is never answered after ttl.
            self._expire(self._clock())
            if done.get(skey):
                return frame
        return None

    async def _first_frame(self, skey: str, running: Awaitable[Response]) -> bytes:
        return (await self._first_run(skey, lambda: running))[1]

    async def run_once_frame(
        self, key: CacheKey, compute: Callable[[], Awaitable[Response]]
    ) -> bytes:
        """See `ResponseCache.run_once_frame`: the kept bytes themselves, encoded once."""
        if self._run_once_replaced:
            # A subclass that changes run_once (to observe it, say) sees every call.
            return encode_response(await self.run_once(key, compute))
        skey = self._key(key)
        done = self._done
        if done:
            self._expire(self._clock())
        frame = done.get(skey)
        if frame:
            return frame  # a repeat: the bytes sent the first time, as they are
        if frame is not None or skey in self._running:
            return encode_response(await self.run_once(key, compute))  # 410, or wait
        # One encode: the frame kept is the frame sent.
        return (await self._first_run(skey, compute))[1]
