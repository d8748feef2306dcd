"""Tools for testing code built on siyi-sdk: a loopback TCP proxy you can cut.

`TcpProxy` sits between a client and a real server on 127.0.0.1. `cut()` aborts every live
connection through it (both sides see a reset, as when a cable is pulled) and stops
listening, so new connections are refused; `resume()` listens again on the same port. Use it
to test reconnection and failover over real sockets::

    async with TcpProxy(server.port) as proxy:
        client = ProtocolClient(proxy.url)
        ...
        await proxy.cut()      # the client's connection drops
        await proxy.resume()   # and can come back
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

__all__ = ["TcpProxy"]


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
        # Shielded: a cut() that is itself cancelled must not cancel the proxy's own links.
        await asyncio.shield(asyncio.gather(*list(self._handlers), return_exceptions=True))
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
