"""Registering handlers and middleware on a server: the decorators of `ProtocolServer`.

`Registration` is the part of `ProtocolServer` that fills its `Dispatcher` (routes, handlers,
middleware, typed events, what the server declares it sends) and its `Uploads` handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from ..api.command import Command, EventModel
from .dispatch import (
    ConnectionHandler,
    Dispatcher,
    ServerEventHandler,
    ServerMiddleware,
    ServerRequestHandler,
)
from .routing import Route
from .uploads import UploadHandler, Uploads

__all__ = ["Registration"]

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])


class Registration:
    """The registration API of a server (a base of `ProtocolServer`)."""

    dispatcher: Dispatcher
    uploads: Uploads

    def use(self, middleware: ServerMiddleware) -> ServerMiddleware:
        """Add a middleware to the server's chain; usable as a decorator.

        ``async def middleware(call: ServerCall, call_next) -> Response | None``. Every
        Request and Event that arrives passes the chain (``call.direction == "in"``), whatever
        carried it; so does what the server sends (``"out"``): `send_request`, `send_event`,
        broadcasts. The first added is the outermost. See `siyi_sdk.pipeline`.
        """
        return self.dispatcher.chain.add(middleware)

    def on_request(self, handler: ServerRequestHandler) -> ServerRequestHandler:
        """Set the catch-all request handler, ``handler(connection, request) -> Response``.

        It answers every command without a typed route. Usable as a decorator.
        """
        self.dispatcher.request_handler = handler
        return handler

    def on_event(self, handler: ServerEventHandler) -> ServerEventHandler:
        """Add an event handler, ``handler(connection, event)``; usable as a decorator.

        Events from one client reach the handlers one at a time, in the order sent.
        """
        self.dispatcher.event_handlers.append(handler)
        return handler

    def on_connect(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Add a handler run when a WebSocket client connects; usable as a decorator.

        It runs beside the connection (it may await `send_request` to that client).
        """
        self.dispatcher.connect_handlers.append(handler)
        return handler

    def on_disconnect(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Add a handler run when a WebSocket client's connection ends; usable as a decorator.

        It runs on every drop; the session (and its Connection) may live on and resume.
        """
        self.dispatcher.disconnect_handlers.append(handler)
        return handler

    def on_session_end(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Add a handler run when a session ends; usable as a decorator.

        A session ends when its client disconnects cleanly, when it expires (`session_ttl`
        with no connection and no HTTP activity), when it is evicted past `max_sessions`, and
        when the server stops.
        """
        self.dispatcher.session_end_handlers.append(handler)
        return handler

    def on_upload(self, handler: UploadHandler) -> UploadHandler:
        """Add a handler run after each successful upload; usable as a decorator.

        ``handler(connection, stored_file)``, sync or async: `stored_file` is a `FileInfo`
        with the file's `path`. It runs in the background once the file is stored (the
        client's answer does not wait for it); an exception it raises is logged.
        """
        return self.uploads.on_upload(handler)

    @overload
    def command(self, command: type[Command[Any]]) -> Callable[[HandlerT], HandlerT]: ...

    @overload
    def command(self, command: str) -> Callable[[HandlerT], HandlerT]: ...

    def command(self, command: type[Command[Any]] | str) -> Callable[[HandlerT], HandlerT]:
        """Register a typed route for one command; a decorator.

        With a `Command` class the handler is ``handler(connection, params: TheCommand)``, its
        params validated into the model (400 with the validation message when they do not fit).
        With a name, ``handler(connection, params: dict)``. The return value becomes the
        Response's data. Routes take precedence over the catch-all `on_request` handler.

        Example::

            @server.command(Echo)
            async def echo(conn: Connection, params: Echo) -> dict[str, Any]:
                return {"message": params.message}
        """

        def register(handler: HandlerT) -> HandlerT:
            if isinstance(command, str):
                route = Route(command, handler)
            else:
                route = Route(command.command_name(), handler, command)
            self.dispatcher.add_route(route)
            return handler

        return register

    def event(self, model: type[EventModel]) -> Callable[[HandlerT], HandlerT]:
        """Register a typed event handler, ``handler(connection, data: Model)``; a decorator.

        The event's data is validated into `model`; data that does not fit is logged and
        dropped (the reader carries on). The event is listed in `/about`.
        """

        def register(handler: HandlerT) -> HandlerT:
            self.dispatcher.add_typed_event(model, handler)
            return handler

        return register

    def declare_event(self, event: type[EventModel] | str) -> None:
        """Declare an event the server sends to its clients (listed in `/about`)."""
        if isinstance(event, str):
            self.dispatcher.sends_events[event] = None
        else:
            self.dispatcher.sends_events[event.event_name()] = event

    def declare_command(self, command: type[Command[Any]] | str) -> None:
        """Declare a command the server sends to its clients (listed in `/about`)."""
        if isinstance(command, str):
            self.dispatcher.sends_commands[command] = None
        else:
            self.dispatcher.sends_commands[command.command_name()] = command
