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
from types import TracebackType
from typing import Any, Self, TypeVar

from siyi_sdk import ProtocolServer, Response
from siyi_sdk.server import MemoryResponseCache
from siyi_sdk.server.state import CacheKey

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


class TcpProxy:
    """A TCP proxy on 127.0.0.1 forwarding to ``target_host:target_port``.

    Args:
        target_port: the port of the real server.
        target_host: its host.

    Attributes:
        port: the proxy's own port (picked on the first `start()`, kept across `resume()`).
        accepting: set while the proxy listens.
        accepted: how many connections were forwarded so far.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepting = asyncio.Event()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._transports: set[asyncio.WriteTransport] = set()
        self._epoch = 0  # bumped by every cut(), so a link opened across a cut is dropped

    @property
    def url(self) -> str:
        """The proxy's WebSocket URL (no path, as the seed's client uses)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def live_connections(self) -> int:
        """Connections being forwarded right now."""
        return len(self._handlers)

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port afterwards)."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.accepting.set()

    async def resume(self) -> None:
        """Accept connections again after `cut()`, on the same port."""
        await self.start()

    async def cut(self) -> None:
        """Reset every live connection and stop listening: new connections are refused."""
        self.accepting.clear()
        self._epoch += 1
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            transport.abort()
        # Aborted transports end their pumps; the link handlers then return on their own.
        await asyncio.gather(*list(self._handlers), return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        """Stop for good."""
        await self.cut()

    async def wait_accepting(self) -> None:
        """Return once the proxy listens."""
        await self.accepting.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._transports.add(writer.transport)
        epoch = self._epoch
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, upstream = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                writer.transport.abort()
                return
            self._transports.add(upstream.transport)
            if epoch != self._epoch:  # cut while connecting upstream
                return
            self.accepted += 1
            pumps = {
                asyncio.create_task(self._pump(reader, upstream)),
                asyncio.create_task(self._pump(up_reader, writer)),
            }
            # Either side closing ends the link: half-open links are not needed here.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            cut = epoch != self._epoch
            for side in (writer, upstream):
                if side is not None:
                    self._transports.discard(side.transport)
                    if cut:
                        side.transport.abort()
                    else:
                        side.close()
            self._handlers.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass


def sleep_until_accepting(proxy: TcpProxy) -> Callable[[float], Awaitable[None]]:
    """A reconnect `sleep` for a WebSocketAdapter behind `proxy`: waits until it accepts again.

    Backoff delays are then decided by events, not by the clock: an adapter whose attempt was
    refused waits exactly until the test resumes the proxy.
    """

    async def sleep(delay: float) -> None:
        await proxy.wait_accepting()
        await asyncio.sleep(0)

    return sleep
