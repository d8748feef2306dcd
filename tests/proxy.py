"""A loopback TCP proxy a test can cut and resume, and the small helpers my test files share.

`TcpProxy` sits between a client and a real server on 127.0.0.1. `cut()` aborts every live
connection through it (both sides get a reset, as when a cable is pulled) and stops listening,
so new connections are refused; `resume()` listens again on the same port. Nothing in the
library is mocked: the bytes travel over real sockets end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from siyi_sdk import ProtocolServer, Response
from siyi_sdk.server import MemoryResponseCache
from siyi_sdk.server.state import CacheKey
from siyi_sdk.testing import TcpProxy

__all__ = [
    "WAIT",
    "Gate",
    "TcpProxy",
    "WatchedCache",
    "running_server",
    "sleep_until_accepting",
    "wait_for",
]

WAIT = 5.0
"""Bound on every wait for something that must happen; it only matters when a test fails."""

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    """Await something that must happen, failing the test instead of hanging."""
    async with asyncio.timeout(timeout):
        return await awaitable


@contextlib.asynccontextmanager
async def running_server(**kwargs: Any) -> AsyncIterator[ProtocolServer]:
    """A real ProtocolServer on a free loopback port (``port=0``), stopped on exit."""
    kwargs.setdefault("port", 0)
    kwargs.setdefault("shutdown_timeout", 1.0)
    async with ProtocolServer(**kwargs) as server:
        yield server


class Gate:
    """A handler that blocks until the test opens the gate, and counts how often it ran.

    `started` is set once a run has begun; `finished` once a run has returned.
    """

    def __init__(self) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.opened = asyncio.Event()

    def open(self) -> None:
        """Let every waiting run (and every later one) return."""
        self.opened.set()

    async def pass_through(self, value: T) -> T:
        """Count a run, wait for the gate, return `value`."""
        self.runs += 1
        self.started.set()
        try:
            await self.opened.wait()
        finally:
            self.finished.set()
        return value


class WatchedCache(MemoryResponseCache):
    """The server's default at-most-once cache, plus a count of each request id's arrivals.

    Passed as ``ProtocolServer(response_cache=...)``, the documented extension point; it only
    observes. `repeated` is set when some id arrives a second time.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: Counter[str] = Counter()
        self.repeated = asyncio.Event()

    async def run_once(self, key: CacheKey, compute: Callable[[], Awaitable[Response]]) -> Response:
        """Count the arrival, then behave exactly as the default cache."""
        self.arrivals[key[1]] += 1
        if self.arrivals[key[1]] > 1:
            self.repeated.set()
        return await super().run_once(key, compute)


def sleep_until_accepting(proxy: TcpProxy) -> Callable[[float], Awaitable[None]]:
    """A reconnect `sleep` for a WebSocketAdapter behind `proxy`: waits until it accepts again.

    Backoff delays are then decided by events, not by the clock: an adapter whose attempt was
    refused waits exactly until the test resumes the proxy.
    """

    async def sleep(delay: float) -> None:
        await proxy.wait_accepting()
        await asyncio.sleep(0)

    return sleep
