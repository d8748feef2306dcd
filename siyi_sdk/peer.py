"""The engine of one live WebSocket, shared by server connections and clients.

A `Peer` owns the id -> Future map of requests in flight, reads frames, answers bad ones
(PROTOCOL.md §4), runs each incoming request in its own task (bounded per connection), runs
events one at a time in order (§6), and fails every waiting request at once when the connection
drops. `call_request_handler` is the one place a handler's outcome becomes a Response.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from aiohttp import WSMsgType

from .errors import (
    ApiError,
    ConnectionClosedError,
    NotConnectedError,
    ProtocolError,
    RequestTimeoutError,
)
from .packets import Event, Packet, Request, Response, StatusCode, encode, parse_message

__all__ = ["Peer", "call_event_handler", "call_request_handler", "encode_response"]

logger = logging.getLogger(__name__)

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY


class _Expired(Exception):
    """Set on a request's future when its timeout runs out."""


def _expire(future: asyncio.Future[Response]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class WebSocketLike(Protocol):
    """What a Peer needs of a WebSocket: aiohttp's client and server sockets both fit."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    async def receive(self, timeout: float | None = None) -> Any: ...

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


async def call_request_handler(
    handler: Callable[..., Any], args: tuple[Any, ...], request: Request
) -> Response:
    """Run a request handler and turn whatever happens into a Response.

    The handler may be sync or async and must return a Response. An `ApiError` it raises
    becomes an error Response with that code; any other exception, or a return value that is
    not a Response, is a programming error: 500 to the peer (no traceback leaks), a logged
    traceback here.

    Args:
        handler: the user's handler.
        args: the arguments to call it with.
        request: the Request being answered.

    Returns:
        The Response to send, with the request's id.
    """
    try:
        result = handler(*args)
        if inspect.isawaitable(result):
            result = await result
    except ApiError as exc:
        return Response.fail(request.id, exc.message, exc.code or StatusCode.FAILED)
    except Exception:
        logger.exception("handler for %r raised", request.command)
        return Response.fail(
            request.id,
            f"internal error: the handler for {request.command!r} raised an exception",
            StatusCode.INTERNAL_ERROR,
        )
    if not isinstance(result, Response):
        logger.error(
            "handler for %r returned %s, not a Response", request.command, type(result).__name__
        )
        return Response.fail(
            request.id,
            f"internal error: the handler for {request.command!r} returned no Response",
            StatusCode.INTERNAL_ERROR,
        )
    if result.id != request.id:
        # A Response answers exactly one request: never let a handler mislabel it.
        result = result.model_copy(update={"id": request.id})
    return result


async def call_event_handler(handler: Callable[..., Any], args: tuple[Any, ...], name: str) -> None:
    """Run an event handler (sync or async); an exception is logged, never propagated."""
    try:
        result = handler(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("handler for event %r raised", name)


def start_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Start a request's task; on Python 3.12+ its first step runs at once (eager start).

    Most handlers answer without ever waiting; an eagerly started task then finishes before
    this returns and costs no trip through the event loop. The task is real either way, so
    `asyncio.current_task()` (used by `asyncio.timeout`, the handler deadline, client
    libraries) is right. Python 3.11 has no eager start: there the task runs on the next turn.

    Returns:
        The task, or None if it already finished.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.Task(coro, loop=loop, **_EAGER)
    return None if task.done() else task


_EAGER: dict[str, Any] = {"eager_start": True} if sys.version_info >= (3, 12) else {}


def _over(data: str | bytes, limit: int) -> bool:
    """True when `data` is over `limit` bytes (a text frame counts its UTF-8 bytes)."""
    size = len(data.encode()) if isinstance(data, str) else len(data)
    return size > limit


def encode_response(response: Response) -> bytes:
    """Encode a Response; data that is not JSON-serialisable becomes a 500 (logged)."""
    try:
        return encode(response)
    except TypeError:
        logger.exception("the result for request %r is not JSON-serialisable", response.id)
        return encode(
            Response.fail(
                response.id,
                "internal error: the result is not JSON-serialisable",
                StatusCode.INTERNAL_ERROR,
            )
        )


class Peer:
    """One live WebSocket: request matching, dispatch of incoming packets, ordered event handling.

    Args:
        ws: an aiohttp WebSocket (client or server side), already open.
        on_request: answers an incoming Request; must not raise (wrap the user's handler with
            `call_request_handler`).
        on_event: handles an incoming Event; called for one event at a time, in order.
        max_in_flight: incoming requests being handled at once; more get 429 at once.
        label: how logs name this peer.
        on_response: offered each Response that matches no request of this peer; True if
            it took it.
        transport: the socket's transport, to tell whether a send can complete at once.
        max_message_size: a frame over this many bytes (after decompression) closes the
            connection with 1009; None leaves the limit to the WebSocket alone.
    """

    def __init__(
        self,
        ws: WebSocketLike,
        *,
        on_request: Callable[[Request], Awaitable[Response]],
        on_event: Callable[[Event], Awaitable[None]],
        max_in_flight: int = 1000,
        label: str = "peer",
        on_response: Callable[[Response], bool] | None = None,
        transport: asyncio.BaseTransport | None = None,
        max_message_size: int | None = None,
    ) -> None:
        self._ws = ws
        self._max_message_size = max_message_size
        self._transport = transport
        self._on_response = on_response
        self._on_request = on_request
        self._on_event = on_event
        self._max_in_flight = max_in_flight
        self.label = label
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self.handling: set[asyncio.Task[None]] = set()
        """Tasks running incoming requests (the server waits for them on shutdown)."""
        self._events: deque[Event] | None = None  # made for the first event: see Connection
        self._event_worker: asyncio.Task[None] | None = None
        self._closed = False
        self.remote_close_code: int | None = None
        """The close code the other side sent, when it closed first (1000: a clean close)."""

    @property
    def closed(self) -> bool:
        """True once the connection has dropped or been closed."""
        return self._closed or self._ws.closed

    def can_send_at_once(self, size: int) -> bool:
        """True when sending `size` bytes now cannot wait for the peer to read.

        aiohttp's send waits only when the socket's buffer went over its high-water mark; a
        frame that keeps it under the low-water mark never does. Without a known transport
        (the client side) it answers True.
        """
        transport = self._transport
        if not isinstance(transport, asyncio.WriteTransport):
            return True
        low, _ = transport.get_write_buffer_limits()
        return transport.get_write_buffer_size() + size < low

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code, once closed."""
        return self._ws.close_code

    async def send(self, packet: Packet) -> None:
        """Send one packet.

        Raises:
            NotConnectedError: the connection is already closed.
            ConnectionClosedError: it dropped while sending.
            TypeError: the packet's params or data are not JSON-serialisable.
        """
        await self.send_raw(encode(packet))

    async def send_raw(self, data: bytes) -> None:
        """Send one already-encoded packet as a text frame (broadcasts encode once).

        Raises:
            NotConnectedError: the connection is already closed.
            ConnectionClosedError: it dropped while sending.
        """
        if self.closed:
            raise NotConnectedError(f"{self.label}: the connection is closed")
        try:
            await self._ws.send_frame(data, _TEXT)
        except ConnectionError as exc:
            raise ConnectionClosedError(f"{self.label}: the connection dropped: {exc}") from exc

    async def request(self, request: Request, timeout: float | None) -> Response:
        """Send a Request and wait for its Response.

        Args:
            request: the Request; its id must not be in flight already.
            timeout: seconds to wait for the Response, None for no limit.

        Returns:
            The Response, whatever its status.

        Raises:
            NotConnectedError: the connection is closed.
            ConnectionClosedError: it dropped before the Response came.
            RequestTimeoutError: no Response within `timeout` (an `asyncio.TimeoutError`).
            ValueError: a request with the same id is already in flight here.
        """
        if self.closed:
            raise NotConnectedError(f"{self.label}: the connection is closed")
        rid = request.id
        if rid in self._pending:
            raise ValueError(f"a request with id {rid!r} is already in flight")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        self._pending[rid] = future
        # One timer handle, not an asyncio.timeout() context: this is the client's hot path.
        timer = None if timeout is None else loop.call_later(timeout, _expire, future)
        try:
            await self.send_raw(encode(request))
            return await future
        except _Expired:
            raise RequestTimeoutError(
                f"no response to {request.command!r} within {timeout:g} s"
            ) from None
        finally:
            del self._pending[rid]
            if timer is not None:
                timer.cancel()

    async def close(self, code: int = 1000, message: str = "") -> None:
        """Close the WebSocket with `code`; `run()` then returns."""
        await self._ws.close(code=code, message=message.encode())

    async def run(self, first: str | bytes | None = None) -> None:
        """Read frames until the connection closes, then fail every request still waiting.

        Args:
            first: a frame already read off the socket, handled before the next one.
        """
        ws = self._ws
        limit = self._max_message_size
        try:
            if first is not None:
                await self._on_frame(first)
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is _TEXT or kind is _BINARY:
                    data = msg.data
                    if limit is not None and len(data) * 4 > limit and _over(data, limit):
                        await self._refuse_oversized(len(data))
                        break
                    await self._on_frame(data)
                elif kind in (
                    WSMsgType.CLOSE,
                    WSMsgType.CLOSING,
                    WSMsgType.CLOSED,
                    WSMsgType.ERROR,
                ):
                    if kind is WSMsgType.ERROR:
                        logger.info("%s: connection error: %s", self.label, msg.data)
                    elif kind is WSMsgType.CLOSE:
                        self.remote_close_code = msg.data
                    break
        finally:
            self._closed = True
            code = ws.close_code
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        ConnectionClosedError(
                            f"{self.label}: the connection dropped (code {code}) "
                            "before the response came"
                        )
                    )

    async def _refuse_oversized(self, size: int) -> None:
        # aiohttp checks the limit before decompression with ">=" and after it with ">", so
        # to accept exactly the limit (PROTOCOL.md §4) it is given one byte more, and the
        # one frame that may then slip through a decompression is refused here.
        logger.info("%s: a frame over %s bytes: closing with 1009", self.label, size)
        await self._ws.close(code=1009, message=b"message too big")

    async def _on_frame(self, raw: str | bytes) -> None:
        try:
            packet = parse_message(raw)
        except ProtocolError as exc:
            logger.debug("%s: bad frame: %s", self.label, exc)
            if exc.packet_type == "response" and exc.packet_id is not None:
                # A malformed answer to a request we sent: fail it now, not at its timeout.
                waiting = self._pending.get(exc.packet_id)
                if waiting is not None and not waiting.done():
                    waiting.set_exception(exc)
            await self._send_quietly(encode(Response.fail(exc.packet_id, str(exc), exc.code)))
            return
        if type(packet) is Response:
            future = self._pending.get(packet.id) if packet.id is not None else None
            if future is None or future.done():
                if self._on_response is not None and self._on_response(packet):
                    return
                logger.debug(
                    "%s: dropping a response that matches nothing: %r", self.label, packet.id
                )
            else:
                future.set_result(packet)
        elif type(packet) is Request:
            if len(self.handling) >= self._max_in_flight:
                await self._send_quietly(
                    encode(
                        Response.fail(
                            packet.id,
                            f"busy: {self._max_in_flight} requests already in flight",
                            StatusCode.BUSY,
                        )
                    )
                )
                return
            task = start_task(self._answer(packet))
            if task is not None:
                self.handling.add(task)
                task.add_done_callback(self.handling.discard)
        else:
            assert type(packet) is Event
            if self._events is None:
                self._events = deque()
            self._events.append(packet)
            if self._event_worker is None:
                self._event_worker = asyncio.create_task(self._drain_events())

    async def _answer(self, request: Request) -> None:
        response = await self._on_request(request)
        await self._send_quietly(encode_response(response))

    async def _drain_events(self) -> None:
        # One worker per connection, alive only while events wait: handlers never overlap and
        # run in arrival order, yet the reader never blocks on them.
        try:
            events = self._events
            while events:
                await self._on_event(events.popleft())
        finally:
            self._event_worker = None

    async def _send_quietly(self, data: bytes) -> None:
        try:
            await self.send_raw(data)
        except (NotConnectedError, ConnectionClosedError):
            logger.debug("%s: an answer was lost: the connection is closed", self.label)
