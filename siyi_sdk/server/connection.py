"""Connection: the server-side handle of one peer, which stands for its session (PROTOCOL.md §7).

A Connection stays the same across the peer's reconnects. `send_event` / `send_request` reach
the peer wherever it is attached: straight down its WebSocket when one is open, otherwise into
the session's bounded buffer, replayed in order when it reconnects or polls ``GET /events``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..calls import DEFAULT_WINDOW, Runs, cancel_packet, stamp, unanswered
from ..errors import (
    ConnectionClosedError,
    NotConnectedError,
    RequestTimeoutError,
    error_for_response,
)
from ..logs import session_tag
from ..packets import Event, Request, Response, encode, kept
from ..pipeline import Call, Chain, Direction
from .mailbox import Mailbox
from .outbox import Outbox

if TYPE_CHECKING:
    from .stats import ServerStats

__all__ = ["Connection", "ServerCall"]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


class ServerCall(Call):
    """A call on the server side: what a peer sent, or what the server sends to it.

    Attributes:
        connection: the peer's session (None for a broadcast, which goes to many).
        cached: for a request that arrived: True when the at-most-once record answered
            instead of a run (set once `call_next` returned).
    """

    __slots__ = ("cached", "connection")

    def __init__(
        self,
        packet: Request | Event,
        direction: Direction,
        connection: Connection | None,
        transport: Literal["websocket", "http"] | None,
    ) -> None:
        super().__init__(packet, direction, transport)
        self.connection = connection
        self.cached = False


class Connection(Mailbox):
    """The server's handle of one peer (its session); handlers receive it first.

    Connections compare by identity, so they can be kept in sets and used as dict keys (as
    `broadcast_request` does). The session's buffer, its polls and the replay down a WebSocket
    that comes back are those of its base, `Mailbox`.

    Attributes:
        id: a number unique within this server process.
        session: the session key (secret: give it only to its peer).
        principal: what authentication said about the peer (`authenticate`'s return value,
            True with `verify_key`, None on an open server). It owns the session: the key
            presented with other credentials is refused (403, PROTOCOL.md §7).
        remote_address: the peer's ``(host, port)`` as last seen, when known.
        headers: the HTTP headers of its latest WebSocket upgrade or HTTP call (a copy of at
            most 8 KiB of them: see `bounded_headers`).
        peer: the WebSocket attached now, if any.
        close_code: the close code of its last WebSocket, once one has closed.
        dropped: packets dropped from the buffer since the last replay (oldest first).
    """

    def __init__(
        self,
        *,
        session: str,
        principal: Any,
        remote_address: tuple[str, int] | None,
        headers: Mapping[str, str],
        request_timeout: float | None,
        buffer_size: int = 1000,
    ) -> None:
        super().__init__(buffer_size)
        self.id = next(_ids)
        self.session = session
        self.principal = principal
        self.remote_address = remote_address
        self.headers = headers
        self.request_timeout = request_timeout
        # Made for the first one: an idle connection's empty set would cost 216 bytes.
        self._withdrawing: set[asyncio.Task[None]] | None = None
        self.runs = Runs()
        """The requests of this peer being run now: their deadlines, cancels and acks (§10)."""
        self.chain: Chain[ServerCall] | None = None
        """The server's middleware chain, which what is sent through this handle passes."""
        self.stats: ServerStats | None = None
        """The server's counters (`deliver` counts the events it is given)."""
        self.ending: asyncio.Task[None] | None = None
        """Once ended with a shared backplane: the task ending it there."""
        self.receives = False
        """True once the peer showed it takes packets (a WebSocket or a poll of /events):
        only then do broadcasts buffer for it while it is away."""
        self.last_active = self.opened = time.monotonic()
        self.provisional = False
        """True while the session was opened by a one-off HTTP call and its key has not been
        presented since (PROTOCOL.md §7): it buffers little and ends soon."""
        self.polls = 0
        self._pending: dict[str, asyncio.Future[Response]] = {}
        # Frames for a WebSocket that does not read fast enough, sent in order by one task,
        # so that a slow peer never makes a sender (a broadcast) wait (see `Outbox`).
        self._outbox: Outbox | None = None

    def __repr__(self) -> str:
        state = "ended" if self.ended else ("attached" if self.is_connected else "detached")
        return f"<Connection #{self.id} {self.transport} {self.remote_address} {state}>"

    # A class attribute until the first log line that needs it: a connection never logged
    # about holds no tag (thousands are idle).
    _log_session: str | None = None

    @property
    def log_session(self) -> str:
        """The session key as logs show it (`logs.session_tag`): made once, when first asked."""
        tag = self._log_session
        if tag is None:
            tag = self._log_session = session_tag(self.session)
        return tag

    @property
    def is_connected(self) -> bool:
        """True while the peer's WebSocket is open."""
        return self.peer is not None and not self.peer.closed

    @property
    def transport(self) -> Literal["websocket", "http"]:
        """``"websocket"`` while a WebSocket is attached, else ``"http"``."""
        return "websocket" if self.is_connected else "http"

    # Delivery --------------------------------------------------------------------------------

    async def deliver(self, packet_id: str, frame: bytes) -> None:
        """Send an encoded packet down the WebSocket, or buffer it while there is none.

        Raises:
            NotConnectedError: the session has ended.
        """
        if self.ended:
            raise NotConnectedError(f"{self!r}: the session has ended")
        if self.stats is not None:
            self.stats.events_sent += 1
        peer = self.direct_peer()
        if peer is not None:
            outbox = self._outbox
            if outbox or not peer.can_send_at_once(len(frame)):
                if outbox is None:
                    outbox = self._outbox = Outbox()
                overflow = outbox.queue(peer, packet_id, frame, keep=self._keep, owner=self)
                if overflow is None:
                    return
                # The outbox is full: the peer is being closed (1013) and what it held waits
                # in the buffer for its return, this packet last (PROTOCOL.md §4).
                for item in overflow:
                    await self._keep(*item)
                return
            try:
                await peer.send_raw(frame)
                return
            except (NotConnectedError, ConnectionClosedError):
                pass  # it dropped just now: keep the packet for the peer's return
        await self._keep(packet_id, frame)

    async def _keep(self, packet_id: str, frame: bytes) -> None:
        """Where a packet goes when the peer cannot take it now (a shared session routes it)."""
        self.buffer(packet_id, frame)

    async def send_event(self, name: str, data: Any = None) -> None:
        """Send an event to this peer, now or, while it is away, when it comes back.

        Raises:
            NotConnectedError: the session has ended.
        """
        event = Event(name=name, data=data)
        chain = self.chain
        if chain:
            await chain.run(ServerCall(event, "out", self, self.transport), self._send_event)
        else:
            await self.deliver(event.id, kept(encode(event)))

    async def _send_event(self, call: ServerCall) -> None:
        event = call.packet
        await self.deliver(event.id, kept(encode(event)))

    async def send_request(
        self, command: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Response:
        """Send a request to this peer and wait for its Response.

        With a WebSocket attached the request goes down it, and fails at once if it drops.
        Otherwise it is buffered; the peer answers after it reconnects or polls ``/events``.

        Args:
            command: the command's name.
            params: its arguments.
            timeout: seconds to wait; defaults to the server's `request_timeout`.

        Raises:
            NotConnectedError: the session has ended.
            ConnectionClosedError: the WebSocket dropped before the answer came.
            RequestTimeoutError: no answer in time (an `asyncio.TimeoutError`).
        """
        request = Request.make(command, params)
        timeout = self.request_timeout if timeout is None else timeout
        chain = self.chain
        if not chain:
            return await self._send_request(request, timeout)

        async def send(call: ServerCall) -> Response:
            assert isinstance(call.packet, Request)
            return await self._send_request(call.packet, timeout)

        answer = await chain.run(ServerCall(request, "out", self, self.transport), send)
        assert isinstance(answer, Response), "a middleware must return the Response"
        return answer

    async def _send_request(self, request: Request, timeout: float | None) -> Response:
        command = request.command
        peer = self.direct_peer()
        if peer is not None:
            return await peer.request(request, timeout)
        if self.ended:
            raise NotConnectedError(f"{self!r}: the session has ended")
        timeout = stamp(request, timeout)  # the peer holds the same deadline (§9)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            await self._expect_answer(request.id, timeout)
            await self._keep(request.id, kept(encode(request)))
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise RequestTimeoutError(
                    f"no response to {command!r} within {timeout:g} s"
                ) from None
        except asyncio.CancelledError:
            if unanswered(future):
                self._withdraw(request.id)
            raise
        finally:
            del self._pending[request.id]

    def _withdraw(self, request_id: str) -> None:
        """Buffer ``siyi.cancel`` for a request the peer will take from the buffer (§10)."""
        event_id, frame = cancel_packet(request_id)
        frame = kept(frame)
        task = asyncio.get_running_loop().create_task(self._keep(event_id, frame))
        tasks = self._withdrawing
        if tasks is None:
            tasks = self._withdrawing = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def stream_request(
        self,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Send a request for a streaming command to this peer; yield its items as they come.

        The peer's handler is an ``async def`` generator (PROTOCOL.md §10). With a WebSocket
        attached the items come as chunks, at most `window` ahead of what was consumed;
        leaving the loop early or cancelling withdraws the request (the generator is closed).
        Without one (a polling peer) the request asks for no stream and the items come at
        once, as one array, after the peer's next poll.

        Args:
            command: the command's name.
            params: its arguments.
            window: chunks in flight at most.
            timeout: seconds the whole stream may take (None: no limit; capped by the budget
                of the handler this runs in).

        Raises:
            ApiError: (a subclass per code) the stream ended with an error, after its items.
            NotConnectedError: the session has ended.
            ConnectionClosedError: the WebSocket dropped before the stream ended.
            RequestTimeoutError: it did not end within `timeout`.
        """
        request = Request.make(command, params)
        peer = self.direct_peer()
        if peer is not None:
            return peer.stream(request, window, timeout)
        return self._items_at_once(request, timeout)

    async def _items_at_once(self, request: Request, timeout: float | None) -> AsyncIterator[Any]:
        """A stream's items asked for as one array, for a peer without a WebSocket."""
        response = await self._send_request(request, timeout)
        if not response.ok:
            raise error_for_response(response)
        for item in response.data if isinstance(response.data, list) else [response.data]:
            yield item

    async def _expect_answer(self, request_id: str, timeout: float | None) -> None:
        """A request is about to leave for a peer that is not here.

        A shared session notes which node waits for the answer.
        """

    def resolve(self, response: Response) -> bool:
        """Hand over the answer to a request sent while the peer was away.

        Returns:
            True if it answered a request still waiting.
        """
        future = self._pending.get(response.id) if response.id is not None else None
        if future is None or future.done():
            return False
        future.set_result(response)
        return True

    def end(self) -> None:
        """End the session: drop the buffer, fail requests waiting on it, wake pollers."""
        super().end()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(f"{self!r}: the session ended"))

    async def close(self, code: int = 1000, message: str = "") -> None:
        """Close the peer's WebSocket with `code` (no-op when none is attached)."""
        if self.peer is not None:
            await self.peer.close(code, message)
