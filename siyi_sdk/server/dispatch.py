"""The call pipeline of a server: middleware, at-most-once, routes and handlers (DESIGN.md).

Every Request and Event that reaches the server, whatever carried it (a WebSocket,
``POST /general``, an upload's completion), enters `Dispatcher.handle` or
`Dispatcher.deliver`: the middleware chain (outermost first), then for a request the
at-most-once record, then the typed route or the catch-all handler. What the server sends
(`Connection.send_event` / `send_request`, broadcasts) passes the same chain outward
(`ServerCall.direction == "out"`), so one middleware sees both directions.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeAlias

from pydantic import ValidationError

from ..api.command import Command, EventModel
from ..calls import Sink, answer_stream, is_reserved, requested_window
from ..logs import call_extra
from ..outcome import (
    answer_to,
    call_event_handler,
    call_request_handler,
    encode_response,
    encode_result,
    failure,
)
from ..packets import Event, Request, Response, StatusCode, format_validation_error
from ..pipeline import Chain, Middleware
from .connection import Connection, ServerCall
from .lifecycle import Lifecycle, ServerSettings
from .routing import Route
from .state import ResponseCache

__all__ = [
    "CallObserver",
    "ConnectionHandler",
    "Dispatcher",
    "ServerEventHandler",
    "ServerMiddleware",
    "ServerRequestHandler",
]

logger = logging.getLogger(__name__)

ServerRequestHandler: TypeAlias = Callable[[Connection, Request], Awaitable[Response] | Response]
"""The catch-all request handler: ``handler(connection, request) -> Response``."""
ServerEventHandler: TypeAlias = Callable[[Connection, Event], Awaitable[None] | None]
"""An event handler: ``handler(connection, event)``."""
ConnectionHandler: TypeAlias = Callable[[Connection], Awaitable[None] | None]
"""A connect/disconnect/session-end handler: ``handler(connection)``."""
ServerMiddleware: TypeAlias = Middleware[ServerCall]
"""``async def middleware(call: ServerCall, call_next) -> Response | None``."""

Transport: TypeAlias = Literal["websocket", "http"]

_DATA = frozenset({dict, list, str, int, float, bool, type(None)})
"""Result types that are never awaitable: the flat path skips `inspect.isawaitable` for them."""


class CallObserver(Protocol):
    """What counts the requests and events a dispatcher answers (the dashboard's recorder).

    Attributes:
        events: events received (the dispatcher adds one per event it delivers).
    """

    events: int

    def answer(
        self, dispatcher: Dispatcher, connection: Connection, request: Request, transport: Transport
    ) -> bytes | Awaitable[bytes]:
        """Answer `request` through ``dispatcher.answer(..., recorded=True)``, counted."""


class _TypedEvent:
    """The handlers of one typed event, and the model its data is validated into."""

    __slots__ = ("handlers", "model")

    def __init__(self, model: type[EventModel]) -> None:
        self.model = model
        self.handlers: list[Callable[..., Any]] = []


class Dispatcher:
    """Routes, handlers and the middleware chain of one server.

    Args:
        settings: the server's settings (`handler_timeout`).
        response_cache: the at-most-once record (PROTOCOL.md §6).
        lifecycle: whether the server is stopping.
    """

    def __init__(
        self, settings: ServerSettings, response_cache: ResponseCache, lifecycle: Lifecycle
    ) -> None:
        self.settings = settings
        self.response_cache = response_cache
        self.lifecycle = lifecycle
        self.chain: Chain[ServerCall] = Chain()
        self.routes: dict[str, Route] = {}
        self.request_handler: ServerRequestHandler | None = None
        self.event_handlers: list[ServerEventHandler] = []
        self.typed_events: dict[str, _TypedEvent] = {}
        self.connect_handlers: list[ConnectionHandler] = []
        self.disconnect_handlers: list[ConnectionHandler] = []
        self.session_end_handlers: list[ConnectionHandler] = []
        self.sends_events: dict[str, type[EventModel] | None] = {}
        """Events the server declared it sends (name -> model), for `/about`."""
        self.sends_commands: dict[str, type[Command[Any]] | None] = {}
        """Commands the server declared it sends to its clients, for `/about`."""
        self.calls: CallObserver | None = None
        """What counts each request and event while the dashboard is on (None: nothing)."""

    # Registration ------------------------------------------------------------------------------

    def add_route(self, route: Route) -> None:
        """Register (or replace) the route of one command."""
        self.routes[route.name] = route

    def add_typed_event(self, model: type[EventModel], handler: Callable[..., Any]) -> None:
        """Add a handler that gets the data of `model`'s event validated into it."""
        name = model.event_name()
        entry = self.typed_events.get(name)
        if entry is None:
            entry = self.typed_events[name] = _TypedEvent(model)
        entry.handlers.append(handler)

    # Requests ------------------------------------------------------------------------------

    async def handle(
        self,
        connection: Connection,
        request: Request,
        transport: Transport,
        sink: Sink | None = None,
    ) -> Response:
        """Answer one request from any transport; never raises.

        Through the middleware chain, then: 503 while stopping; a repeat of an id seen in
        the same session gets the first Response (at most once, §6); then the typed route,
        else the catch-all handler, else 404; handler errors are mapped by
        `call_request_handler`. A streaming command's items go to `sink` when the request
        asked for a stream (§10), else they are answered as one array.
        """
        if not self.chain:
            return await self._once(connection, request, None, sink, transport)
        call = ServerCall(request, "in", connection, transport)

        def terminal(call: ServerCall) -> Awaitable[Response]:
            return self._once(connection, request, call, sink, transport)

        answered = await self.chain.run(call, terminal)
        answer = answer_to(request, answered, "a middleware", connection, transport)
        if call.duration is None and answer.status != "ok" and logger.isEnabledFor(logging.DEBUG):
            # A middleware refused it by itself (a 403, a 429): nothing else logs that. A flood
            # of refusals (a rate limit at work) must stay cheap: DEBUG, tested first.
            logger.debug(
                "a middleware refused %r: %d %s",
                request.command,
                answer.code,
                answer.error,
                extra=call_extra(request, connection, transport),
            )
        return answer

    def streams(self, request: Request) -> bool:
        """True when `request`'s command has a streaming handler (an async generator)."""
        route = self.routes.get(request.command)
        return route is not None and route.stream

    def answer(
        self,
        connection: Connection,
        request: Request,
        transport: Transport,
        recorded: bool = False,
    ) -> bytes | Awaitable[bytes]:
        """`handle_frame`, answered at once when nothing on the request's path must wait.

        The flat path of DESIGN.md: with no middleware, while the server runs, a command whose
        handler is a plain function is looked up in the at-most-once record, run, encoded
        (no Response model for an ok answer) and recorded, all in this call, which returns the
        frame to send. It runs in a context of its own, so context variables it sets stay its
        own, as in a task. Anything else returns `handle_frame`'s coroutine, for a task; a
        streaming command asked for a stream (``meta.window``) sends its chunks on the
        connection's WebSocket.

        While the dashboard is on, `calls` times and counts the request and calls this back
        with `recorded` True; while it is off that is one test per request.
        """
        if self.calls is not None and not recorded:
            return self.calls.answer(self, connection, request, transport)
        route = self.routes.get(request.command)
        if route is not None:
            if route.plain and not self.chain and not self.lifecycle.stopping:
                # `transport` is for the log line of a failure: `connection` cannot tell it (an
                # HTTP call may come while the session's WebSocket is open).
                key = (connection.session, request.id)
                out = self.response_cache.answer_now(
                    key, self._run_plain, route, connection, request, transport
                )
                if out is not None:
                    return out
            elif route.stream and transport == "websocket":
                window = requested_window(request)
                peer = connection.peer
                if window is not None and peer is not None:
                    return self.handle_frame(
                        connection, request, transport, Sink(peer.send_raw, window)
                    )
        return self.handle_frame(connection, request, transport)

    def _run_plain(
        self, route: Route, connection: Connection, request: Request, transport: Transport
    ) -> bytes | Awaitable[Response]:
        try:
            result = contextvars.copy_context().run(route.invoke, connection, request)
        except Exception as exc:
            return encode_response(failure(request, exc, connection, transport))
        if type(result) not in _DATA and inspect.isawaitable(result):
            # A plain function that returned an awaitable (a lambda around a coroutine).
            finish = call_request_handler(
                route.finish, (request, result), request, connection, transport
            )
            return self._within_deadline(connection, request, finish, transport)
        return encode_result(request, result, connection, transport)

    async def handle_frame(
        self,
        connection: Connection,
        request: Request,
        transport: Transport,
        sink: Sink | None = None,
    ) -> bytes:
        """`handle`, answered as the frame to send: the transports' path.

        With no middleware this is the flat path of DESIGN.md: the at-most-once record keeps
        the bytes that are sent, and a repeat is answered with those bytes as they are.
        """
        if self.chain or self.lifecycle.stopping:
            return encode_response(await self.handle(connection, request, transport, sink))
        return await self.response_cache.run_once_frame(
            (connection.session, request.id),
            lambda: self.run(connection, request, sink, transport),
        )

    async def _once(
        self,
        connection: Connection,
        request: Request,
        call: ServerCall | None,
        sink: Sink | None,
        transport: Transport,
    ) -> Response:
        if self.lifecycle.stopping:
            return Response.fail(
                request.id, "unavailable: the server is shutting down", StatusCode.UNAVAILABLE
            )
        if call is None:
            return await self.response_cache.run_once(
                (connection.session, request.id),
                lambda: self.run(connection, request, sink, transport),
            )
        ran = False

        def compute() -> Awaitable[Response]:
            nonlocal ran
            ran = True
            return self.run(connection, request, sink, transport)

        answer = await self.response_cache.run_once((connection.session, request.id), compute)
        call.cached = not ran
        return answer

    async def run(
        self,
        connection: Connection,
        request: Request,
        sink: Sink | None = None,
        transport: Transport | None = None,
    ) -> Response:
        """Run the request's handler (no at-most-once, no middleware): its Response.

        Under the request's deadline (the smaller of ``meta.timeout`` and `handler_timeout`:
        408 past it), cancellable by the sender (``siyi.cancel``: 499), §9 and §10. The
        `transport` that carried the request goes on the log lines of a failure, a 408, a 499.
        """
        route = self.routes.get(request.command)
        if route is not None and route.stream:
            answer: Awaitable[Response] = self._stream(route, connection, request, sink, transport)
        else:
            handler: Callable[..., Any] | None = route or self.request_handler
            if handler is None:
                return Response.fail(
                    request.id, f"unknown command: {request.command!r}", StatusCode.UNKNOWN_COMMAND
                )
            answer = call_request_handler(
                handler, (connection, request), request, connection, transport
            )
        return await self._within_deadline(connection, request, answer, transport)

    def _within_deadline(
        self,
        connection: Connection,
        request: Request,
        answer: Awaitable[Response],
        transport: Transport | None,
    ) -> Awaitable[Response]:
        return connection.runs.run(
            request, answer, self.settings.handler_timeout, connection, transport
        )

    def _stream(
        self,
        route: Route,
        connection: Connection,
        request: Request,
        sink: Sink | None,
        transport: Transport | None,
    ) -> Awaitable[Response]:
        """A streaming command: its items to `sink` as chunks, else as one array (§10)."""
        start = functools.partial(route.invoke, connection, request)
        limit = self.settings.max_message_size
        return answer_stream(connection.runs, request, start, sink, limit, connection, transport)

    # Events ----------------------------------------------------------------------------------

    async def deliver(self, connection: Connection, event: Event, transport: Transport) -> None:
        """Hand one event to its handlers (through the middleware chain); never raises.

        A reserved event (``siyi.*``, §10) is the protocol's: it acts on the session's runs
        (a cancel, an ack) and reaches neither the middleware nor a handler.
        """
        if is_reserved(event.name):
            connection.runs.control(event)
            return
        if self.calls is not None:
            self.calls.events += 1
        if not self.chain:
            await self._deliver(connection, event, transport)
            return
        call = ServerCall(event, "in", connection, transport)
        await self.chain.run(call, self._deliver_call)

    async def _deliver_call(self, call: ServerCall) -> None:
        assert isinstance(call.packet, Event)
        assert call.connection is not None
        await self._deliver(call.connection, call.packet, call.transport)

    async def _deliver(
        self, connection: Connection, event: Event, transport: Transport | None
    ) -> None:
        typed = self.typed_events.get(event.name)
        if typed is not None:
            try:
                model = typed.model.model_validate(event.data or {})
            except ValidationError as exc:
                logger.warning(
                    "dropped event %r: its data does not fit %s: %s",
                    event.name,
                    typed.model.__name__,
                    format_validation_error(exc),
                    extra=call_extra(event, connection, transport),
                )
            else:
                for on_typed in typed.handlers:
                    await call_event_handler(
                        on_typed, (connection, model), event.name, connection, event.id, transport
                    )
        for handler in self.event_handlers:
            await call_event_handler(
                handler, (connection, event), event.name, connection, event.id, transport
            )

    # Outgoing --------------------------------------------------------------------------------

    async def outgoing(
        self,
        packet: Request | Event,
        connection: Connection | None,
        send: Callable[[ServerCall], Awaitable[Response | None]],
    ) -> Response | None:
        """Pass a packet the server sends through the chain (outward), then `send` it."""
        transport: Transport | None = None if connection is None else connection.transport
        call = ServerCall(packet, "out", connection, transport)
        return await self.chain.run(call, send)
