"""ProtocolClient: the seed's client API over the self-reconnecting WebSocket adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from .adapters.websocket import WebSocketAdapter
from .calls import DEFAULT_WINDOW
from .instrument import instrument
from .packets import Event, Request, Response, plain_arguments

__all__ = ["ProtocolClient"]


_SEND_PACKET = WebSocketAdapter.send_packet


class ProtocolClient(WebSocketAdapter):
    """A client of a ProtocolServer over one WebSocket.

    Use it as ``async with ProtocolClient(url) as client:``: the first connection attempt is
    made before the block starts (check `is_connected`), reconnection runs in the background,
    and the connection is closed when the block ends. Or run `connect()` yourself; it is
    long-running.

    It is also a `WebSocketAdapter`, so it can be added to an `AdapterManager`. Constructor
    arguments are those of `WebSocketAdapter`: over TLS, give a ``wss://`` URL, and ``ssl=`` a
    context trusting the server's CA when it is not one the system trusts.

    Example::

        client = ProtocolClient(url="ws://127.0.0.1:8765", request_timeout=10)
        client.on_event(handle_server_event)
        async with client:
            response = await client.send_request("echo", {"message": "hi"})
    """

    async def connect(self, *, auto_reconnect: bool = True) -> None:
        """Connect and serve the connection; long-running.

        With `auto_reconnect` (the default) it reconnects after every drop, with exponential
        backoff, until `disconnect()`; otherwise it returns when the connection closes.

        Raises:
            OSError, aiohttp.ClientError, asyncio.TimeoutError: without `auto_reconnect`, when
                the connection cannot be opened.
        """
        instrument(self)  # Tracing (and Metrics) when OpenTelemetry is configured
        self._closing = False
        runner = asyncio.create_task(self._serve(auto_reconnect=auto_reconnect))
        self._runner = runner
        try:
            await runner
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # disconnect() cancels the runner: that is a normal end, not our own cancellation.
            if self._closing and task is not None and not task.cancelling():
                return
            raise

    async def disconnect(self) -> None:
        """Close the connection (code 1000) and stop reconnecting. Idempotent."""
        await self.close()

    async def send_request(
        self, command: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Response:
        """Send a request to the server and wait for its Response.

        Args:
            command: the command's name.
            params: its arguments, a JSON object.
            timeout: seconds to wait; defaults to the client's `request_timeout`.

        Returns:
            The Response, whatever its status (check `response.status` or `response.ok`).

        Raises:
            NotConnectedError: not connected right now.
            ConnectionClosedError: the connection dropped before the Response came.
            RequestTimeoutError: no Response in time (an `asyncio.TimeoutError`).
        """
        peer = self._peer
        if (
            peer is None
            or self._middleware
            or type(self).send_packet is not _SEND_PACKET
            or not plain_arguments(command, params)
        ):
            return await self.send_packet(Request.make(command, params), timeout=timeout)
        # What send_packet does with the Request, without building it and without its two
        # hops: the common call, on the hot path (no middleware sees it, none is installed).
        limit = self.request_timeout if timeout is None else timeout
        return await peer.call(command, params, limit)

    def stream(
        self,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Send a request for a streaming command; yield its items as they come (§10).

        ``async for line in client.stream("tail_log", {"lines": 100}): ...``. The server
        sends at most `window` items ahead of what the loop consumed. Leaving the loop early
        (``break``, an exception) or cancelling the task withdraws the request: the server's
        generator is closed.

        Args:
            command: the command's name.
            params: its arguments.
            window: items in flight at most.
            timeout: seconds the whole stream may take (None: no limit).

        Raises:
            ApiError: (a subclass per code) the stream ended with an error, after its items.
            NotConnectedError: not connected right now.
            ConnectionClosedError: the connection dropped before the stream ended.
            RequestTimeoutError: it did not end within `timeout`.
        """
        return self.stream_packet(Request.make(command, params), window=window, timeout=timeout)

    async def send_event(self, name: str | Event, data: Any = None) -> None:
        """Send an event to the server.

        Args:
            name: the event's name (or a ready Event, as adapters take it).
            data: its payload, any JSON value.

        Raises:
            NotConnectedError: not connected right now.
            ConnectionClosedError: the connection dropped while sending.
        """
        event = name if isinstance(name, Event) else Event(name=name, data=data)
        await super().send_event(event)
