"""The engine of one live WebSocket, shared by server connections and clients.

A `Peer` owns the id -> Future map of requests in flight, reads frames, answers bad ones
(PROTOCOL.md §4), runs each incoming request in its own task (bounded per connection), runs
events one at a time in order (§6), and fails every waiting request at once when the connection
drops. How a handler's outcome becomes an answer is `outcome`'s.

Bounded memory (§4): the reader stops reading while too many events wait for their handler or
while too many bytes wait to be written to the other side, so a peer that sends faster than it
is served, or does not read, is held back by TCP instead of filling this process.

Why one module of about 970 lines: `Peer` is the hot path of every WebSocket on both sides
(read, parse, dispatch, match, write, pause), and each step reads state the others keep;
split into parts, every frame would pay attribute lookups across objects. The engine of
deadlines, cancels and streams it drives lives in `calls`, handlers' outcomes in `outcome`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import WSMsgType

from .calls import (
    ACK_EVENT,
    CHUNK_EVENT,
    Inbox,
    cancel_packet,
    capped,
    is_reserved,
    stamp,
    unanswered,
)
from .errors import (
    ConnectionClosedError,
    NotConnectedError,
    ProtocolError,
    RequestTimeoutError,
    error_for_response,
)
from .expiry import Expired, Expiry
from .frames import FrameTap, text_frame, text_frames, writable
from .liveness import Liveness
from .logs import SessionTagged, bad_packet_extra, call_extra
from .outcome import encode_response, start_task
from .packets import (
    Event,
    Packet,
    Request,
    Response,
    StatusCode,
    encode,
    encode_event,
    encode_request,
    new_id,
    parse_message,
)
from .wire import DEFAULT_MAX_IN_FLIGHT

__all__ = [
    "DEFAULT_MAX_OUTBOX_BYTES",
    "DEFAULT_MAX_PENDING_EVENTS",
    "FRAME_UNIT",
    "Peer",
]

DEFAULT_MAX_PENDING_EVENTS = 1000
"""Events read from one connection and waiting for their handler, at most (PROTOCOL.md §4)."""

DEFAULT_MAX_OUTBOX_BYTES = 16 * 1024 * 1024
"""Bytes waiting to be written to one connection before its reader pauses (PROTOCOL.md §4)."""

FRAME_UNIT = 1 << 48
"""`Peer.received` and `Peer.sent` count frames and bytes in one integer, so that each frame
costs one addition: frames times this, plus bytes (``divmod(count, FRAME_UNIT)``)."""

logger = logging.getLogger(__name__)

_BATCH = 16
# Frames closer than this to the previous write are batched (a burst); the first of a burst,
# and any frame after a pause, go at once. A loopback round trip is ~100 µs or more.
_BURST_GAP = 50e-6
_monotonic = time.monotonic

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY


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

    async def ping(self, message: bytes = b"") -> None: ...

    async def pong(self, message: bytes = b"") -> None: ...


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.debug("closing a WebSocket failed: %r", exc)  # it is closed either way


def _over(data: str | bytes, limit: int) -> bool:
    """True when `data` is over `limit` bytes (a text frame counts its UTF-8 bytes)."""
    size = len(data.encode()) if isinstance(data, str) else len(data)
    return size > limit


class Peer:
    """One live WebSocket: request matching, dispatch of incoming packets, ordered event handling.

    Args:
        ws: an aiohttp WebSocket (client or server side), already open.
        on_request: answers an incoming Request: the frame to send when it is answered at
            once (the server's flat path, PROTOCOL.md's rules kept by the caller), else an
            awaitable of the Response or its frame, run in a task of its own. Must not raise
            (wrap the user's handler with `call_request_handler`).
        on_event: handles an incoming Event; called for one event at a time, in order.
        max_in_flight: incoming requests being handled at once; more get 429 at once.
        label: how logs name this peer.
        on_response: offered each Response that matches no request of this peer; True if
            it took it.
        transport: the socket's transport, to tell whether a send can complete at once and
            how much waits in its write buffer.
        max_message_size: a frame over this many bytes (after decompression) closes the
            connection with 1009; None leaves the limit to the WebSocket alone.
        max_pending_events: events read and waiting for their handler, at most (at least 1).
            At the bound the reader stops reading until the handler has taken half of them:
            the sender is held back by TCP, nothing is dropped.
        max_outbox_bytes: bytes waiting to be written to the other side (the transport's
            write buffer plus `unsent`) above which the reader stops reading, until the
            other side has read enough of them.
        on_control: takes the reserved events of the answering side (``siyi.cancel``,
            ``siyi.ack``: `calls.Runs.control`) at once, as they are read, ahead of the
            ordered events; without it they are dropped. ``siyi.chunk`` events go to this
            peer's own streams. No reserved event reaches `on_event`.
        masked: this is the client's end, whose frames are masked (RFC 6455 §5.3); matters
            only with a `transport`, where this peer writes frames itself.
        session: the session this socket serves, for the log lines about its calls (its
            hashed key: `logs.call_extra`).
        heartbeat: seconds between this side's pings (`liveness.Liveness`): a connection
            that answers nothing within half an interval is cut (close code 1006). None: no
            pings of its own. Either way this peer answers the other side's pings: give it a
            WebSocket made with ``autoping=False`` and no ``heartbeat`` of aiohttp's.
    """

    # Slots, not a __dict__: a server holds one Peer per open WebSocket (~1.5 KiB less each).
    __slots__ = (
        "__weakref__",
        "_background",
        "_batch",
        "_closed",
        "_closer",
        "_closing",
        "_coalesce",
        "_dead",
        "_drainer",
        "_event_worker",
        "_events",
        "_expiry",
        "_last_write",
        "_liveness",
        "_low_water",
        "_masked",
        "_max_in_flight",
        "_max_message_size",
        "_on_control",
        "_on_event",
        "_on_request",
        "_on_response",
        "_pending",
        "_pongs",
        "_reading",
        "_room",
        "_streams",
        "_transport",
        "_writable",
        "_ws",
        "busy",
        "frame_limit",
        "handling",
        "label",
        "max_outbox_bytes",
        "max_pending_events",
        "received",
        "remote_close_code",
        "sent",
        "session",
        "unsent",
    )

    def __init__(
        self,
        ws: WebSocketLike,
        *,
        on_request: Callable[[Request], bytes | Awaitable[Response | bytes]],
        on_event: Callable[[Event], Awaitable[None]],
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        label: str = "peer",
        on_response: Callable[[Response], bool] | None = None,
        transport: asyncio.BaseTransport | None = None,
        max_message_size: int | None = None,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES,
        on_control: Callable[[Event], None] | None = None,
        masked: bool = False,
        session: SessionTagged | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self._ws = ws
        self._liveness = (
            None
            if heartbeat is None
            else Liveness(
                heartbeat,
                heard=self._heard,
                ping=ws.ping,
                on_dead=self._on_dead,
                label=label,
            )
        )
        self._pongs = 0  # pings and pongs read: not frames of the stats (`received`)
        self._dead = False  # cut by the heartbeat
        self._on_control = on_control
        self._streams: dict[str, Inbox] = {}
        # Made for the first one: an idle connection's empty set would cost 216 bytes.
        self._background: set[asyncio.Task[None]] | None = None
        self._max_message_size = max_message_size
        self.frame_limit = max_message_size
        """The largest frame a `FrameTap` hands over (`frames.FrameTaker`)."""
        self._reading = False  # the reader waits for a frame in `ws.receive()`
        self._transport = transport
        self._writable = writable(transport)
        # Frames that can be sent at once (answers given at once, a client's requests) are
        # batched and written together (`_flush`) where this peer can write its own frames: a
        # known transport and no compression.
        self._coalesce = self._writable is not None and not getattr(ws, "compress", True)
        # Below this many bytes in the socket's buffer a send never waits (`can_send_at_once`).
        self._low_water = self._writable.get_write_buffer_limits()[0] if self._writable else 0
        self._masked = masked
        self.session = session
        self._batch: list[bytes] | None = None
        self._last_write = 0.0
        self._expiry: Expiry | None = None  # made for the first request with a time limit
        self.max_pending_events = max(1, max_pending_events)
        self.max_outbox_bytes = max_outbox_bytes
        self.unsent = 0
        """Bytes of encoded packets given to this peer to send and not written yet (answers
        on their way out, a session's outbox): see `hold_bytes`."""
        # The reader waits on this while it may not read (made only then); `_wake` ends it.
        self._room: asyncio.Future[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._closing = False  # this side started the close
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
        self.received = 0
        """Frames read, times `FRAME_UNIT`, plus their bytes (a text frame's characters)."""
        self.sent = 0
        """Frames sent (or queued to be), times `FRAME_UNIT`, plus their bytes."""
        self.busy = 0
        """Requests answered 429 at once: `max_in_flight` requests were running."""
        """The close code the other side sent, when it closed first (1000: a clean close)."""

    @property
    def closed(self) -> bool:
        """True once the connection has dropped or been closed."""
        return self._closed or self._ws.closed

    def can_send_at_once(self, size: int) -> bool:
        """True when sending `size` bytes now cannot wait for the peer to read.

        aiohttp's send waits only when the socket's buffer went over its high-water mark; a
        frame that keeps it under the low-water mark never does. Without a known transport
        it answers True.
        """
        writable = self._writable
        if writable is None:
            return True
        return writable.get_write_buffer_size() + size < self._low_water

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code, once closed (1006 when the heartbeat cut it)."""
        return 1006 if self._dead else self._ws.close_code

    @property
    def outbox_bytes(self) -> int:
        """Bytes waiting to be written to the other side: the socket's buffer and `unsent`."""
        writable = self._writable
        buffered = writable.get_write_buffer_size() if writable is not None else 0
        return buffered + self.unsent

    def hold_bytes(self, size: int) -> None:
        """Count `size` bytes that will be sent through this peer in `unsent` (the outbox)."""
        self.unsent += size

    def release_bytes(self, size: int) -> None:
        """`size` bytes counted by `hold_bytes` were written (or given up)."""
        self.unsent -= size
        if self._room is not None:
            self._wake()

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
        if self._batch:
            self._flush()  # answers already read go first
        try:
            self.sent += FRAME_UNIT + len(data)
            await self._ws.send_frame(data, _TEXT)
        except ConnectionError as exc:
            raise ConnectionClosedError(f"{self.label}: the connection dropped: {exc}") from exc

    def request(self, request: Request, timeout: float | None) -> Awaitable[Response]:
        """Send a Request and wait for its Response (await what this returns).

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
        future, timeout = self._expect(request, timeout)
        return self._ask(request.id, request.command, encode(request), future, timeout)

    def call(
        self, command: str, params: dict[str, Any] | None, timeout: float | None
    ) -> Awaitable[Response]:
        """`request` of a new Request for `command`, without building its model.

        The client's common call: the frame is encoded straight from the arguments (checked by
        the caller as `Request.make` checks them). Same result and errors as `request`.
        """
        timeout = capped(timeout)  # the receiver holds the same deadline (§9)
        rid = new_id()
        future = self._register(rid, timeout)
        frame = encode_request(
            rid, command, params, None if timeout is None else {"timeout": timeout}
        )
        return self._ask(rid, command, frame, future, timeout)

    async def _ask(
        self,
        rid: str,
        command: str,
        frame: bytes,
        future: asyncio.Future[Response],
        timeout: float | None,
    ) -> Response:
        """Send the frame of a registered request; its Response, or the error that ends it."""
        try:
            if self._coalesce and self.can_send_at_once(len(frame)):
                self._queue(frame)  # written with the others of this turn of the loop
            else:
                await self.send_raw(frame)
            return await future
        except Expired:
            raise RequestTimeoutError(f"no response to {command!r} within {timeout:g} s") from None
        except asyncio.CancelledError:
            if unanswered(future):
                self.withdraw(rid)
            raise
        finally:
            del self._pending[rid]

    def _expect(
        self, request: Request, timeout: float | None
    ) -> tuple[asyncio.Future[Response], float | None]:
        """Register `request` as awaiting its Response: the future, and the time limit kept.

        The timeout is capped by the current budget and stamped as ``meta.timeout`` (§9).

        Raises:
            NotConnectedError: the connection is closed.
            ValueError: a request with the same id is already in flight here.
        """
        timeout = stamp(request, timeout)  # the receiver holds the same deadline (§9)
        return self._register(request.id, timeout), timeout

    def _register(self, rid: str, timeout: float | None) -> asyncio.Future[Response]:
        """The future of request `rid`'s Response, failed with `Expired` after `timeout`."""
        if self._closed or self._ws.closed:
            raise NotConnectedError(f"{self.label}: the connection is closed")
        if rid in self._pending:
            raise ValueError(f"a request with id {rid!r} is already in flight")
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        if timeout is not None:
            # Not a timer per request (the client's hot path): one for all of them.
            expiry = self._expiry
            if expiry is None:
                expiry = self._expiry = Expiry()  # made for the first timed request
            expiry.add(future, timeout)
        return future

    def withdraw(self, request_id: str) -> None:
        """Send ``siyi.cancel`` for a request this side sent (§10), without waiting for it.

        Called when the task awaiting the answer is cancelled: it raises `CancelledError` at
        once, and the other side cancels the handler and answers 499 (which nobody awaits).
        """
        if self.closed:
            return
        _, frame = cancel_packet(request_id)
        self._spawn(self._send_quietly(frame))

    def _spawn(self, work: Awaitable[None]) -> None:
        """Run `work` in a task of this peer's own, kept until it ends."""
        task = asyncio.ensure_future(work)
        tasks = self._background
        if tasks is None:
            tasks = self._background = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def stream(
        self, request: Request, window: int, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Send a Request that asks for a streamed answer (§10); yield its items as they come.

        Every item consumed is acknowledged (in batches of half the window), so the other side
        never has more than `window` chunks in flight. Leaving the loop early (``break``, an
        exception, the task cancelled) withdraws the request (``siyi.cancel``).

        Args:
            request: the Request; ``meta.window`` is set on it.
            window: chunks the other side may send ahead of what was consumed.
            timeout: seconds the whole stream may take (None: no limit), sent as
                ``meta.timeout`` (capped by the budget of the handler this runs in).

        Raises:
            ApiError: (a subclass per code) the stream ended with an error, after its items.
            RequestTimeoutError: the stream did not end within `timeout`.
            ConnectionClosedError: the connection dropped before the stream ended.
        """
        future, timeout = self._expect(request, timeout)
        rid = request.id
        request.meta = {**(request.meta or {}), "window": window}
        inbox = self._streams[rid] = Inbox(future)
        batch = max(1, window // 2)
        acked = consumed = -1
        finished = False
        try:
            await self.send_raw(encode(request))
            items = inbox.items
            while True:
                await inbox.wait()
                while items:
                    yield items.popleft()
                    consumed += 1
                    if consumed - acked >= batch and not future.done():
                        acked = consumed
                        await self._send_quietly(
                            encode_event(new_id(), ACK_EVENT, {"id": rid, "seq": consumed})
                        )
                if future.done():
                    finished = True
                    try:
                        response = future.result()
                    except Expired:
                        raise RequestTimeoutError(
                            f"the stream of {request.command!r} did not end within {timeout:g} s"
                        ) from None
                    if not response.ok:
                        raise error_for_response(response)
                    return
        finally:
            del self._pending[rid]
            del self._streams[rid]
            if not finished and unanswered(future):
                self.withdraw(rid)

    async def close(self, code: int = 1000, message: str = "", timeout: float = 10.0) -> None:
        """Close the WebSocket with `code`; `run()` then returns.

        The close frame follows what is already in the socket's buffer; if the other side has
        not taken it within `timeout` seconds (it does not read), the connection is cut.
        Requests withdrawn just before (``siyi.cancel`` on its way) are sent first.
        """
        if self._background:
            await asyncio.wait(self._background, timeout=min(timeout, 1.0))
        if self._batch:
            self._flush()
        self._closing = True
        await self._close_within(code, message, timeout)

    def shut(self, code: int, message: str, timeout: float) -> None:
        """Close from code that must not wait: the peer counts as closed from now on.

        The close frame follows what is already in the socket's buffer; if the other side has
        not taken it within `timeout` seconds (it does not read), the connection is cut.
        """
        if self._closer is not None:
            return
        if self._batch:
            self._flush()
        self._closed = self._closing = True
        self._closer = asyncio.get_running_loop().create_task(
            self._close_within(code, message, timeout)
        )

    async def _close_within(self, code: int, message: str, timeout: float) -> None:
        # Without a bound, closing a peer that does not read would wait for it forever. The
        # close runs in its own task, so that giving up on it cancels nothing it waits on
        # (aiohttp's writers share one drain future): cutting the connection ends it.
        closing = asyncio.ensure_future(self._ws.close(code=code, message=message.encode()))
        closing.add_done_callback(_log_failure)
        self._wake()  # after the close's first step: a reader waiting for room sees it
        done, _ = await asyncio.wait({closing}, timeout=timeout)
        if not done:
            logger.info("%s: the close was not taken within %g s: cutting", self.label, timeout)
            if self._writable is not None:
                self._writable.abort()
            else:
                closing.cancel()

    async def run(self, first: str | bytes | None = None) -> None:
        """Read frames until the connection closes, then fail every request still waiting.

        Args:
            first: a frame already read off the socket, handled before the next one.
        """
        ws = self._ws
        limit = self._max_message_size
        if self._liveness is not None:
            self._liveness.start()
        # The frames of a read go straight to `take_frame` while the reader waits (`frames`),
        # where this peer writes its own frames (its replies then never need an await).
        tap: FrameTap | None = getattr(ws, "frame_tap", None)
        if tap is not None:
            if self._coalesce:
                tap.taker = self
            else:
                tap.retire()
        try:
            if first is not None and (rest := self._on_frame(first)) is not None:
                await rest
            while True:
                self._reading = True
                try:
                    msg = await ws.receive()
                finally:
                    self._reading = False
                kind = msg.type
                if kind is _TEXT or kind is _BINARY:
                    # Bounded memory (§4): no frame is handled while the handler is behind or
                    # the other side does not read what it is sent, and meanwhile nothing more
                    # is read (aiohttp's queue fills, then TCP holds the sender back).
                    if not self._has_room():
                        await self._wait_for_room()
                    data = msg.data
                    self.received += FRAME_UNIT + len(data)
                    if limit is not None and len(data) * 4 > limit and _over(data, limit):
                        await self._refuse_oversized(len(data))
                        break
                    rest = self._on_frame(data)
                    if rest is not None:
                        await rest
                elif kind is WSMsgType.PING:
                    self._pongs += 1
                    await ws.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    self._pongs += 1
                elif kind in (
                    WSMsgType.CLOSE,
                    WSMsgType.CLOSING,
                    WSMsgType.CLOSED,
                    WSMsgType.ERROR,
                ):
                    if kind is WSMsgType.ERROR:
                        logger.info("%s: connection error: %s", self.label, msg.data)
                    elif kind is WSMsgType.CLOSE and not self._closing:
                        self.remote_close_code = msg.data  # not the echo of our own close
                    break
        finally:
            self._closed = True
            if tap is not None:
                tap.retire()
            if self._liveness is not None:
                self._liveness.stop()
            if self._expiry is not None:
                self._expiry.clear()
            code = ws.close_code
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(
                        ConnectionClosedError(
                            f"{self.label}: the connection dropped (code {code}) "
                            "before the response came"
                        )
                    )

    def may_take(self) -> bool:
        """True while a `FrameTap` may hand a frame over: see `frames.FrameTaker`.

        The reader waits for a frame and would read one now: the same checks as before each
        `receive` (bounded memory, §4), so a tapped read is held back exactly as a read is.
        """
        return self._reading and not self._closing and not self._closed and self._has_room()

    def _has_room(self) -> bool:
        """False while a frame read must wait (§4): for the event handler or the other side.

        That is, while too many events wait for their handler, or too many bytes wait to be
        written to the other side.
        """
        events = self._events
        if events is not None and len(events) >= self.max_pending_events:
            return False
        return self.outbox_bytes <= self.max_outbox_bytes

    def take_frame(self, text: str) -> None:
        """Handle a text frame a `FrameTap` read, as the reader handles one it receives."""
        self.received += FRAME_UNIT + len(text)
        try:
            rest = self._on_frame(text)
        except Exception:  # a bug: end this connection, as the reader's task would end
            logger.exception("%s: a frame could not be handled: closing", self.label)
            self.shut(1011, "internal error", timeout=1.0)
            return
        if rest is not None:  # not while this peer writes its own frames (`_reply`)
            self._spawn(rest)

    def _heard(self) -> int:
        if self._room is not None and self._events and self.outbox_bytes <= self.max_outbox_bytes:
            # The reader is held back by this side's own event handler (§4), not by silence
            # of the other side, whose pongs wait unread behind the events: not a dead peer.
            self._pongs += 1
        return self.received + self._pongs

    def _on_dead(self) -> None:
        # No answer to a ping: nothing to say goodbye to. Cutting the connection ends `run`.
        self._dead = True
        if self._writable is not None:
            self._writable.abort()
        else:
            self.shut(1011, "no answer to a ping", timeout=1.0)

    def _wake(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)

    async def _wait_for_room(self) -> None:
        """Return once the reader may read again (or the connection is closing)."""
        loop = asyncio.get_running_loop()
        paused = False
        while not self.closed:
            events = self._events
            if events is not None and len(events) >= self.max_pending_events:
                why = f"{len(events)} events wait for their handler"
            elif self.outbox_bytes > self.max_outbox_bytes:
                why = f"{self.outbox_bytes} bytes wait to be written"
                self._watch_drain()
            else:
                break
            if not paused:
                paused = True
                logger.debug("%s: reading paused: %s", self.label, why)
            room = self._room = loop.create_future()
            # A close nobody tells this peer of (the heartbeat's) is seen within a second.
            tick = loop.call_later(1.0, self._wake)
            try:
                await room
            finally:
                tick.cancel()
                self._room = None
        if paused:
            logger.debug("%s: reading resumed", self.label)

    def _watch_drain(self) -> None:
        # The socket's buffer shrinks with no call from us: wait for its drain in a task made
        # only while paused (at most one per peer), which wakes the reader. aiohttp's
        # protocols have `_drain_helper` (what its writers await); other transports are
        # looked at again a little later.
        writable = self._writable
        if self._drainer is not None or writable is None:
            return
        loop = asyncio.get_running_loop()
        drain = getattr(writable.get_protocol(), "_drain_helper", None)
        _, high = writable.get_write_buffer_limits()
        if drain is None or writable.get_write_buffer_size() <= high:
            loop.call_later(0.05, self._wake)  # over the bound, not over the high-water mark
            return
        self._drainer = loop.create_task(self._drained(drain))

    async def _drained(self, drain: Callable[[], Awaitable[None]]) -> None:
        try:
            await drain()
        except Exception:  # the connection was lost: the reader learns it from receive()
            pass
        finally:
            self._drainer = None
            self._wake()

    async def _refuse_oversized(self, size: int) -> None:
        # aiohttp checks the limit before decompression with ">=" and after it with ">", so
        # to accept exactly the limit (PROTOCOL.md §4) it is given one byte more, and the
        # one frame that may then slip through a decompression is refused here.
        logger.info("%s: a frame over %s bytes: closing with 1009", self.label, size)
        if self._batch:
            self._flush()
        await self._ws.close(code=1009, message=b"message too big")

    def _on_frame(self, raw: str | bytes) -> Awaitable[None] | None:
        """Take one frame: None when it is dealt with, else what is left to await (a send).

        Not a coroutine: the frames of the hot path (an answer to match, a request answered
        at once, an event to queue) cost no coroutine of their own.
        """
        try:
            packet = parse_message(raw)
        except ProtocolError as exc:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s: bad frame: %s",
                    self.label,
                    exc,
                    extra=bad_packet_extra(
                        exc.packet_id, exc.packet_type, self.session, "websocket"
                    ),
                )
            if exc.packet_type == "response" and exc.packet_id is not None:
                # A malformed answer to a request we sent: fail it now, not at its timeout.
                waiting = self._pending.get(exc.packet_id)
                if waiting is not None and not waiting.done():
                    waiting.set_exception(exc)
            return self._reply(encode(Response.fail(exc.packet_id, str(exc), exc.code)))
        if type(packet) is Response:
            future = self._pending.get(packet.id) if packet.id is not None else None
            if future is None or future.done():
                if self._on_response is not None and self._on_response(packet):
                    return None
                logger.debug(
                    "%s: dropping a response that matches nothing: %r",
                    self.label,
                    packet.id,
                    extra=call_extra(
                        session=self.session, transport="websocket", request_id=packet.id
                    ),
                )
            else:
                future.set_result(packet)
        elif type(packet) is Request:
            if len(self.handling) >= self._max_in_flight:
                self.busy += 1
                if logger.isEnabledFor(logging.DEBUG):  # a flood of these must stay cheap
                    logger.debug(
                        "%s: refused %r: %d requests already in flight: answered 429",
                        self.label,
                        packet.command,
                        self._max_in_flight,
                        extra=call_extra(packet, self.session, "websocket"),
                    )
                return self._reply(
                    encode(
                        Response.fail(
                            packet.id,
                            f"busy: {self._max_in_flight} requests already in flight",
                            StatusCode.BUSY,
                        )
                    )
                )
            answer = self._on_request(packet)
            if type(answer) is bytes:
                # Answered at once: no task, no trip through the event loop. On a server socket
                # the answers to every frame already read are written together, in one write
                # when the reader next waits: one system call for a burst, not one per answer.
                if self._coalesce:
                    self._queue(answer)
                    return None
                if self.closed:
                    return None
                return self._send_answer(answer, packet)
            assert not isinstance(answer, bytes)
            task = start_task(self._answer(answer))
            if task is not None:
                self.handling.add(task)
                task.add_done_callback(self.handling.discard)
        else:
            assert type(packet) is Event
            if is_reserved(packet.name):
                self._on_reserved(packet)
                return None
            if self._events is None:
                self._events = deque()
            self._events.append(packet)
            if self._event_worker is None:
                self._event_worker = asyncio.create_task(self._drain_events())
        return None

    def _reply(self, frame: bytes) -> Awaitable[None] | None:
        """Send an answer of the reader's own (a 400, a 429); None, or the send to await.

        Queued where this peer writes its own frames (then the outbox bound, not an await,
        holds the reader back): a tapped frame's handling never needs to wait.
        """
        if self._coalesce:
            self._queue(frame)
            return None
        return self._send_quietly(frame)

    async def _send_answer(self, answer: bytes, request: Request) -> None:
        try:
            self.sent += FRAME_UNIT + len(answer)
            await self._ws.send_frame(answer, _TEXT)
        except ConnectionError:
            logger.debug(
                "%s: an answer was lost: the connection dropped",
                self.label,
                extra=call_extra(request, self.session, "websocket"),
            )

    def _queue(self, frame: bytes) -> None:
        """Send `frame` now, or with the frames that follow it closely, in one write.

        A frame that comes more than `_BURST_GAP` seconds after this peer's last write goes at
        once, with nothing scheduled: a lone request or answer waits for nothing and costs no
        extra turn of the loop. One that follows closer (the answers to what one read brought,
        the requests of many tasks woken together) joins a batch written when the loop turn
        ends, or once `_BATCH` frames wait: a burst costs two writes, not one per frame.
        """
        self.sent += FRAME_UNIT + len(frame)
        batch = self._batch
        if batch is None:
            now = _monotonic()
            if now - self._last_write > _BURST_GAP:
                self._last_write = now
                self._write(text_frame(frame, masked=self._masked), 1)
                return
            self._batch = [frame]
            asyncio.get_running_loop().call_soon(self._flush)
            return
        batch.append(frame)
        if len(batch) >= _BATCH:
            self._batch = []  # the turn goes on: what follows waits for its end
            self._write(text_frames(batch, masked=self._masked), len(batch))

    def _flush(self) -> None:
        """Write the frames batched by `_queue` as text frames, in one write."""
        batch = self._batch
        self._batch = None
        if batch:
            self._last_write = _monotonic()
            self._write(text_frames(batch, masked=self._masked), len(batch))

    def _write(self, frames: bytes, count: int) -> None:
        """Write `count` frames made by `text_frame(s)` to the socket, unless it is gone."""
        writable = self._writable
        if self.closed or writable is None or writable.is_closing():
            # Requests among them fail as the reader ends: it sees the same drop.
            logger.debug("%s: %d frames lost: the connection dropped", self.label, count)
            return
        writable.write(frames)

    def _on_reserved(self, event: Event) -> None:
        if event.name == CHUNK_EVENT:
            data = event.data
            rid = data.get("id") if isinstance(data, dict) else None
            inbox = self._streams.get(rid) if type(rid) is str else None
            if inbox is not None:
                inbox.put(data)
            else:
                logger.debug(
                    "%s: dropping a chunk of no stream here: %r",
                    self.label,
                    data,
                    extra=call_extra(
                        session=self.session,
                        transport="websocket",
                        request_id=rid if type(rid) is str else None,
                    ),
                )
        elif self._on_control is not None:
            self._on_control(event)

    async def _answer(self, pending: Awaitable[Response | bytes]) -> None:
        answer = await pending
        # Bytes: the answer already encoded (the server's at-most-once record keeps them).
        data = answer if isinstance(answer, bytes) else encode_response(answer)
        # Counted until written: the reader pauses while too much waits (§4).
        size = len(data)
        self.unsent += size
        try:
            await self._send_quietly(data)
        finally:
            self.unsent -= size
            if self._room is not None:
                self._wake()

    async def _drain_events(self) -> None:
        # One worker per connection, alive only while events wait: handlers never overlap and
        # run in arrival order, yet the reader never blocks on them.
        try:
            events = self._events
            resume = self.max_pending_events // 2
            while events:
                await self._on_event(events.popleft())
                if self._room is not None and len(events) <= resume:
                    self._wake()  # the reader waits for the handler to catch up
        finally:
            self._event_worker = None

    async def _send_quietly(self, data: bytes) -> None:
        try:
            await self.send_raw(data)
        except (NotConnectedError, ConnectionClosedError):
            logger.debug("%s: an answer was lost: the connection is closed", self.label)
