"""The adapter interface: one method, `send_packet(RequestPacket) -> ResponsePacket`.

Every adapter also runs a chain of client middleware (`Adapter.use`, see `siyi_sdk.pipeline`)
around what it sends (`send_packet`, `send_event`) and what it receives (`handle_request`,
`handle_event`). A subclass gets it without writing anything: `Adapter.__init_subclass__`
wraps the subclass's own `send_packet` and `send_event` (see `adapters.middleware`), so the
method a user implements and the call a user makes stay `send_packet`.

Why one module of about 470 lines: it is the contract a user's adapter implements
(`Adapter`, the session it shares, its modes), documented in one place; the machinery behind
it lives elsewhere (`adapters.middleware`, `calls`, `outcome`).
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, TypeAlias

from ..calls import DEFAULT_WINDOW, Runs, Sink, answer_stream, is_reserved
from ..errors import (
    InvalidResultError,
    ProtocolVersionError,
    TransportError,
    error_for_response,
)
from ..logs import call_extra, session_tag
from ..outcome import call_event_handler, call_request_handler
from ..packets import (
    PROTOCOL_VERSION,
    SESSION_HEADER,
    Event,
    Request,
    RequestPacket,
    Response,
    ResponsePacket,
    StatusCode,
)
from ..pipeline import Chain, ClientCall, Middleware
from ..wire import UPLOAD_PATH, FileInfo
from .middleware import (
    carrier,
    current_call,
    forward_event,
    forward_request,
    incoming_call,
    install_chain,
)
from .upload_source import UploadProgress, UploadSource

__all__ = [
    "Adapter",
    "AdapterMode",
    "ClientEventHandler",
    "ClientRequestHandler",
    "SessionRef",
    "check_protocol",
]


logger = logging.getLogger(__name__)

ClientRequestHandler: TypeAlias = Callable[
    [Request], Awaitable[Response] | Response | AsyncIterator[Any]
]
"""A handler for requests the server sends: `handler(request) -> Response`, or an ``async
def`` generator that yields the items of a streamed answer (PROTOCOL.md §10)."""
ClientEventHandler: TypeAlias = Callable[[Event], Awaitable[None] | None]
"""A handler for events the server sends: `handler(event)`."""


class SessionRef:
    """The session key of one client, shared by all its adapters.

    The server opens a session at first contact and returns its key; every adapter then
    presents it, so the server sees one peer whichever adapter carries a packet. An
    AdapterManager gives its adapters one `SessionRef`.

    Attributes:
        key: the session key, None until the server gave one.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.runs = Runs()
        """The server's requests this client is answering: their deadlines, cancels, acks."""
        self._tagged: tuple[str, str] | None = None  # (key, its tag), made on first use

    @property
    def log_session(self) -> str | None:
        """The key as logs show it (`logs.session_tag`), made once per key; None before one."""
        key = self.key
        if key is None:
            return None
        tagged = self._tagged
        if tagged is None or tagged[0] is not key:
            tagged = self._tagged = (key, session_tag(key))
        return tagged[1]

    def header(self) -> dict[str, str]:
        """The header that presents the key (``X-Siyi-Session``); empty before there is one."""
        return {SESSION_HEADER: self.key} if self.key is not None else {}

    def adopt(self, headers: Mapping[str, str], source: str) -> None:
        """Adopt the key a server's HTTP answer carries, if any (see `update`)."""
        self.update(headers.get(SESSION_HEADER), source)

    def update(self, key: str | None, source: str) -> None:
        """Adopt the key the server returned (a new one when the old session had ended)."""
        if key and key != self.key:
            if self.key is not None:
                logger.info(
                    "%s: the server opened a new session (the old one had ended)",
                    source,
                    extra=call_extra(session=self),
                )
            self.key = key


def check_protocol(version: object) -> None:
    """Refuse a server whose protocol version this client does not speak.

    Raises:
        ProtocolVersionError: `version` is not `PROTOCOL_VERSION`.
    """
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(version, PROTOCOL_VERSION)


class AdapterMode(enum.Flag):
    """What an adapter can do: SEND requests, RECEIVE events and server requests, or both."""

    SEND = enum.auto()
    RECEIVE = enum.auto()


class Adapter(ABC):
    """A way to reach the server.

    Writing an adapter means implementing `send_packet`; everything else has a default.
    `mode` and `priority` are class attributes a subclass may override (the built-in adapters
    also take them as constructor keywords). An adapter is an async context manager:
    `start()` on enter, `close()` on exit (both no-ops by default).

    Middleware (`use`) runs around every `send_packet` and `send_event` and every request and
    event received (`handle_request`, `handle_event`), for a subclass too: its own
    `send_packet`/`send_event` are wrapped when the class is made, and the chain runs once per
    call even when an override calls ``super().send_packet(...)``. With no middleware added,
    a call costs the wrapper's call and one truthiness test: no call object is built, no
    context variable set.

    Attributes:
        mode: SEND (the default), RECEIVE, or both.
        priority: higher is preferred by an AdapterManager (default 0).
        upload_path: the server's upload endpoint, for adapters that can `upload`.
        upload_attempts: attempts at one upload (the first and its resumes) before giving up.
    """

    mode: AdapterMode = AdapterMode.SEND
    priority: int = 0
    upload_path: str = UPLOAD_PATH
    upload_attempts: int = 5

    # Class-level defaults so that a subclass needs no constructor of its own.
    _request_handler: ClientRequestHandler | None = None
    _event_handlers: tuple[ClientEventHandler, ...] = ()
    _parent: Adapter | None = None
    _session_ref: SessionRef | None = None
    _middleware: Chain[ClientCall] | None = None
    # What `call.transport` says for this adapter's calls (the built-in adapters set it).
    _call_transport: ClassVar[Literal["websocket", "http"] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_chain(cls)

    def use(self, middleware: Middleware[ClientCall]) -> Middleware[ClientCall]:
        """Add a client middleware; usable as a decorator. Returns it.

        ``async def middleware(call: ClientCall, call_next) -> Response | None`` sees every
        Request this adapter sends (`call_next` returns its Response, or raises what the
        transport raised), every Event it sends (`call_next` returns None), and every request
        and event it receives from the server (``call.direction == "in"``; for a request,
        what the chain returns is the Response the client answers with). A middleware may
        answer by itself without calling `call_next`: nothing is sent, no handler runs.

        `call.carrier` is the adapter that carried the packet (this one; for an
        `AdapterManager`, the adapter that answered, with `call.failovers` naming each one
        that failed first), `call.duration` how long `call_next` took. Middlewares run in the
        order added, the first added outermost.

        A manager's middleware sees what passes through the manager: the packets it sends,
        and what its adapters receive and hand on to it (an adapter with handlers of its own
        keeps its packets). An adapter's own middleware still runs for the packets it
        carries for the manager.
        """
        chain = self._middleware
        if chain is None:
            chain = self._middleware = Chain()
        return chain.add(middleware)

    def _current_call(self) -> ClientCall | None:
        """The call this adapter's chain runs, from inside `send_packet`/`send_event`.

        None when the adapter has no middleware. A manager fills in its carrier and failovers.
        """
        return current_call(self)

    @abstractmethod
    async def send_packet(self, packet: RequestPacket) -> ResponsePacket:
        """Carry one Request to the server and return its Response.

        Args:
            packet: the Request; its id is kept as is (a retry elsewhere reuses it).

        Returns:
            The Response, whatever its status: an error Response is an answer.

        Raises:
            TransportError: (or `ConnectionError`/`OSError`) the packet may not have arrived;
                an AdapterManager then tries the next adapter.
        """

    async def stream_packet(
        self, packet: Request, *, window: int = DEFAULT_WINDOW, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Send a Request for a streaming command; yield its items as they come (§10).

        This default asks for no stream: the server answers with every item at once, as one
        array, and they are yielded from it. `WebSocketAdapter` and `HttpAdapter` receive them
        as they are produced; leaving the loop early then withdraws the request.

        Args:
            packet: the Request.
            window: items the server may send ahead of what was consumed (WebSocket).
            timeout: seconds the whole stream may take (None: the adapter's own default).

        Raises:
            ApiError: (a subclass per code) the server answered with an error; a stream that
                fails midway raises it after the items that came before.
            TransportError: as `send_packet`.
        """
        response = await self.send_packet(packet)
        if not response.ok:
            raise error_for_response(response)
        if not isinstance(response.data, list):
            raise InvalidResultError(
                f"{packet.command!r} answered {type(response.data).__name__}, not a list of items",
                response=response,
            )
        for item in response.data:
            yield item

    @property
    def name(self) -> str:
        """How logs and errors name this adapter (its class name by default)."""
        return type(self).__name__

    @property
    def is_available(self) -> bool:
        """False while the adapter knows it cannot send (e.g. its socket is down)."""
        return True

    @property
    def last_error(self) -> BaseException | None:
        """Why the adapter is down, when it knows (reported by an AdapterManager)."""
        return None

    async def send_event(self, event: Event) -> None:
        """Send one Event to the server.

        Raises:
            TransportError: this adapter cannot carry events, or the transport failed.
        """
        raise TransportError(f"{self.name} cannot send events")

    async def upload(
        self,
        source: UploadSource,
        *,
        name: str | None = None,
        progress: UploadProgress | None = None,
        upload_id: str | None = None,
    ) -> FileInfo:
        """Upload a file to the server on a connection of its own (PROTOCOL.md §8).

        The built-in WebSocket and HTTP adapters implement it; this default cannot upload
        (it raises `TransportError`, so an AdapterManager tries the next adapter).

        Args:
            source: a path, bytes, a binary file object, or an async iterator of bytes (a
                stream that cannot seek is spooled to a temporary file first).
            name: the file's name (default: the path's or file object's name, else "upload");
                the server sanitises it.
            progress: ``progress(sent_bytes, total_bytes)``, sync or async.
            upload_id: the upload's id (default: a new UUID4); pass the id of an upload that
                was interrupted earlier, even in another process, to resume it.

        Returns:
            What the server stored.

        Raises:
            BadRequestError: the server found a digest or size mismatch (it kept nothing).
            TooLargeError: the file is over the server's limit.
            UnauthorizedError: the server refused the key.
            BusyError: another part of the same upload kept running on the server.
            TransportError: the server could not be reached, or every attempt was cut.
        """
        raise TransportError(f"{self.name} cannot upload files")

    async def start(self) -> None:
        """Open whatever the adapter needs (no-op by default)."""

    async def close(self) -> None:
        """Release the adapter's resources (no-op by default)."""

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

    # Receiving. Handlers registered on the adapter win; otherwise it hands what it receives to
    # its parent (an AdapterManager sets itself as parent).

    def on_request(self, handler: ClientRequestHandler) -> ClientRequestHandler:
        """Register the handler for requests the server sends; usable as a decorator."""
        self._request_handler = handler
        return handler

    def on_event(self, handler: ClientEventHandler) -> ClientEventHandler:
        """Add a handler for events the server sends; usable as a decorator."""
        self._event_handlers = (*self._event_handlers, handler)
        return handler

    @property
    def session(self) -> SessionRef:
        """The session key holder this adapter presents (shared within a manager)."""
        if self._session_ref is None:
            self._session_ref = SessionRef()
        return self._session_ref

    def share_session(self, ref: SessionRef) -> None:
        """Present `ref`'s session key from now on (an AdapterManager calls this)."""
        self._session_ref = ref

    def set_parent(self, parent: Adapter | None) -> None:
        """Hand received packets to `parent` when this adapter has no handler of its own."""
        self._parent = parent

    async def handle_request(self, request: Request) -> Response:
        """Answer a request the server sent (RECEIVE adapters call this).

        The middleware chain runs here; then the handler registered on this adapter, else the
        parent's `handle_request`, else an UNKNOWN_COMMAND answer. An override that calls
        ``super().handle_request(...)`` keeps the chain. Never raises: a middleware's
        `ApiError` becomes that error's Response, any other exception a 500.
        """
        chain = self._middleware
        if not chain:
            return await self._deliver_request(request)
        call = incoming_call(self, request)
        return await call_request_handler(
            chain.run, (call, self._deliver_request_call), request, self.session, call.transport
        )

    async def handle_event(self, event: Event) -> None:
        """Deliver an event the server sent (RECEIVE adapters call this).

        The middleware chain runs here; then the handlers registered on this adapter, else
        the parent's `handle_event`. An override that calls ``super().handle_event(...)``
        keeps the chain. Never raises: an exception is logged. A reserved event (``siyi.*``:
        a cancel or an ack of §10) acts on the session's runs and reaches no handler.
        """
        if is_reserved(event.name):
            self.session.runs.control(event)
            return
        chain = self._middleware
        if not chain:
            await self._deliver_event(event)
            return
        call = incoming_call(self, event)
        await call_event_handler(
            chain.run,
            (call, self._deliver_event_call),
            event.name,
            self.session,
            event.id,
            call.transport,
        )

    async def _deliver_request_call(self, call: ClientCall) -> Response:
        request = call.packet
        assert isinstance(request, Request)
        return await self._deliver_request(request)

    async def _deliver_event_call(self, call: ClientCall) -> None:
        event = call.packet
        assert isinstance(event, Event)
        await self._deliver_event(event)

    def chunk_sink(self, request: Request) -> Sink | None:
        """Where the chunks of a streamed answer to `request` go; None answers one array.

        An adapter that can send the server ``siyi.chunk`` events as they are produced (the
        WebSocket) returns its sink when the request asked for a stream (``meta.window``).
        """
        return None

    async def _deliver_request(self, request: Request) -> Response:
        handler = self._request_handler
        if handler is not None:
            session = self.session
            # For the log lines of a failure, a 408, a 499. A class attribute for the built-in
            # adapters; only a parent (a manager) asks who handed it the request.
            transport = self._call_transport or carrier(self, request)._call_transport
            # Under the server's deadline (meta.timeout: 408) and cancellable by it (499).
            if inspect.isasyncgenfunction(handler):
                start = functools.partial(handler, request)
                sink = self.chunk_sink(request)
                answer = answer_stream(session.runs, request, start, sink, None, session, transport)
            else:
                answer = call_request_handler(handler, (request,), request, session, transport)
            return await session.runs.run(request, answer, None, session, transport)
        parent = self._parent
        if parent is None:
            return Response.fail(
                request.id, f"unknown command: {request.command!r}", StatusCode.UNKNOWN_COMMAND
            )
        if not parent._middleware:
            return await parent.handle_request(request)
        return await forward_request(self, parent, request)

    async def _deliver_event(self, event: Event) -> None:
        if self._event_handlers:
            transport = self._call_transport or carrier(self, event)._call_transport
            for handler in self._event_handlers:
                await call_event_handler(
                    handler, (event,), event.name, self.session, event.id, transport
                )
            return
        parent = self._parent
        if parent is None:
            logger.debug(
                "%s: no handler for event %r",
                self.name,
                event.name,
                extra=call_extra(event, self.session),
            )
        elif not parent._middleware:
            await parent.handle_event(event)
        else:
            await forward_event(self, parent, event)


install_chain(Adapter)  # its own send_event (which refuses) passes the chain too
