"""ProtocolServer: WebSocket at "/", POST /general and GET /about on one aiohttp port.

Every transport goes through one dispatch path, `handle(connection, request) -> Response`:
shutdown check, at-most-once cache, typed route or catch-all handler, error mapping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar, overload

import orjson
from aiohttp import web

from .._version import __version__
from ..adapters.websocket import DEFAULT_MAX_MESSAGE_SIZE
from ..api.command import Command
from ..errors import ProtocolError
from ..packets import (
    PROTOCOL_VERSION,
    Event,
    Request,
    Response,
    StatusCode,
    encode,
    parse_message,
)
from ..peer import Peer, call_event_handler, call_request_handler, encode_response
from .connection import Connection
from .routing import Route
from .state import MemoryResponseCache, ResponseCache

__all__ = ["ProtocolServer"]

logger = logging.getLogger(__name__)

ServerRequestHandler: TypeAlias = Callable[[Connection, Request], Awaitable[Response] | Response]
"""The catch-all request handler: ``handler(connection, request) -> Response``."""
ServerEventHandler: TypeAlias = Callable[[Connection, Event], Awaitable[None] | None]
"""An event handler: ``handler(connection, event)``."""
ConnectionHandler: TypeAlias = Callable[[Connection], Awaitable[None] | None]
"""A connect/disconnect handler: ``handler(connection)``."""

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

_JSON = "application/json"


class ProtocolServer:
    """A server speaking the siyi protocol to WebSocket and HTTP clients on one port.

    Register handlers, then either ``await server.start()`` (serves until `stop()`) or
    ``async with server:`` (serves in the background inside the block).

    Args:
        host: the interface to bind.
        port: the TCP port; 0 picks a free one (read it back from `port` once started).
        heartbeat_interval: seconds between pings to each WebSocket; one that does not answer
            within half an interval is closed. None turns the heartbeat off.
        max_message_size: the largest frame or `/general` body accepted, in bytes; a larger
            frame closes its connection with 1009, a larger body gets 413.
        max_in_flight: requests one connection may have running at once; more get 429.
        request_timeout: default seconds `send_request`/`broadcast_request` wait for a client.
        handler_timeout: seconds a handler may run before the request is answered 408
            (None: no limit).
        shutdown_timeout: seconds `stop()` lets running handlers finish.
        response_cache_ttl: seconds a Response is kept to answer a repeat of its request id.
        response_cache: the at-most-once cache (default: in memory, `response_cache_ttl`).
        path: the WebSocket path.
        general_path: the path of the HTTP packet endpoint.
        about_path: the path of the server description.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        heartbeat_interval: float | None = 30.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = 1000,
        request_timeout: float | None = 30.0,
        handler_timeout: float | None = None,
        shutdown_timeout: float = 5.0,
        response_cache_ttl: float = 60.0,
        response_cache: ResponseCache | None = None,
        path: str = "/",
        general_path: str = "/general",
        about_path: str = "/about",
    ) -> None:
        self.host = host
        self._port = port
        self.heartbeat_interval = heartbeat_interval
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.handler_timeout = handler_timeout
        self.shutdown_timeout = shutdown_timeout
        self.path = path
        self.general_path = general_path
        self.about_path = about_path
        # `is None`, not `or`: a cache defines __len__, so an empty one is falsy.
        self.response_cache = (
            response_cache
            if response_cache is not None
            else MemoryResponseCache(ttl=response_cache_ttl)
        )
        self._request_handler: ServerRequestHandler | None = None
        self._event_handlers: list[ServerEventHandler] = []
        self._connect_handlers: list[ConnectionHandler] = []
        self._disconnect_handlers: list[ConnectionHandler] = []
        self._routes: dict[str, Route] = {}
        self._connections: dict[Connection, None] = {}  # insertion-ordered set
        self._background: set[asyncio.Task[Any]] = set()
        self._http_calls: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._app: web.Application | None = None

    # Registration ---------------------------------------------------------------------------

    def on_request(self, handler: ServerRequestHandler) -> ServerRequestHandler:
        """Set the catch-all request handler, ``handler(connection, request) -> Response``.

        It answers every command without a typed route. Usable as a decorator.
        """
        self._request_handler = handler
        return handler

    def on_event(self, handler: ServerEventHandler) -> ServerEventHandler:
        """Add an event handler, ``handler(connection, event)``; usable as a decorator.

        Events from one client reach the handlers one at a time, in the order sent.
        """
        self._event_handlers.append(handler)
        return handler

    def on_connect(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Add a handler run when a WebSocket client connects; usable as a decorator.

        It runs beside the connection (it may await `send_request` to that client).
        """
        self._connect_handlers.append(handler)
        return handler

    def on_disconnect(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Add a handler run when a WebSocket client's connection ends; usable as a decorator."""
        self._disconnect_handlers.append(handler)
        return handler

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

            @server.command(GetPlayerList)
            async def players(conn: Connection, params: GetPlayerList) -> list[str]:
                return worlds[params.world]
        """

        def register(handler: HandlerT) -> HandlerT:
            if isinstance(command, str):
                route = Route(command, handler)
            else:
                route = Route(command.command_name(), handler, command)
            self._routes[route.name] = route
            return handler

        return register

    # Lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one once started with ``port=0``)."""
        if self._runner is not None:
            for address in self._runner.addresses:
                if isinstance(address, tuple):
                    return int(address[1])
        return self._port

    @property
    def connections(self) -> list[Connection]:
        """The WebSocket connections open now."""
        return list(self._connections)

    @property
    def is_serving(self) -> bool:
        """True between a successful start and `stop()`."""
        return self._runner is not None and not self._stopping

    def make_app(self) -> web.Application:
        """Build (once) the aiohttp application, to serve it yourself or mount it."""
        if self._app is None:
            app = web.Application(client_max_size=self.max_message_size)
            app.router.add_get(self.path, self._websocket)
            app.router.add_post(self.general_path, self._general)
            app.router.add_get(self.about_path, self._about)
            self._app = app
        return self._app

    async def start_serving(self) -> None:
        """Bind and serve in the background; returns once the port is open.

        Raises:
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            return
        self._stopping = False
        self._stopped.clear()
        runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("serving on ws://%s:%d%s", self.host, self.port, self.path)

    async def start(self) -> None:
        """Start serving and keep serving until `stop()` is called (long-running)."""
        await self.start_serving()
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop gracefully. Idempotent.

        New requests are answered 503 at once; running handlers get `shutdown_timeout`
        seconds to finish and send their Responses; then every WebSocket is closed with 1001
        (going away) and the port is released.
        """
        runner = self._runner
        if runner is None:
            return
        if self._stopping:
            await self._stopped.wait()  # another stop() is under way
            return
        self._stopping = True
        running = {t for c in self._connections if c.peer for t in c.peer.handling}
        running |= self._http_calls
        if running:
            await asyncio.wait(running, timeout=self.shutdown_timeout)
        # Stop listening before telling clients to go away: a client reconnects as soon as it
        # sees 1001, and a connection accepted while the runner cleans up is never served nor
        # closed (the client hangs until its connect timeout). Refused is the right answer.
        for site in list(runner.sites):
            await site.stop()
        await asyncio.gather(
            *(c.close(1001, "server shutting down") for c in list(self._connections)),
            return_exceptions=True,
        )
        await runner.cleanup()
        self._runner = None
        self._stopped.set()
        logger.info("server stopped")

    async def __aenter__(self) -> Self:
        await self.start_serving()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # Sending --------------------------------------------------------------------------------

    async def send_request(
        self,
        connection: Connection,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Response:
        """Send a request to one client and wait for its Response.

        Args:
            connection: the client.
            command: the command's name.
            params: its arguments.
            timeout: seconds to wait (default `request_timeout`).

        Raises:
            NotConnectedError: the client has no open WebSocket.
            ConnectionClosedError: it dropped before answering.
            RequestTimeoutError: no answer in time (an `asyncio.TimeoutError`).
        """
        return await connection.send_request(command, params, timeout=timeout)

    async def send_event(self, connection: Connection, name: str, data: Any = None) -> None:
        """Send an event to one client.

        Raises:
            NotConnectedError: the client has no open WebSocket.
            ConnectionClosedError: it dropped while sending.
        """
        await connection.send_event(name, data)

    def _targets(self, exclude: Iterable[Connection] | None) -> list[Connection]:
        skip = set(exclude) if exclude else ()
        return [c for c in self._connections if c not in skip and c.is_connected]

    async def broadcast_event(
        self, name: str, data: Any = None, *, exclude: Iterable[Connection] | None = None
    ) -> None:
        """Send an event to every connected client except those in `exclude`.

        The event is encoded once. A client that drops meanwhile is skipped (logged).
        """
        frame = encode(Event(name=name, data=data))
        targets = self._targets(exclude)
        results = await asyncio.gather(
            *(c.peer.send_raw(frame) for c in targets if c.peer), return_exceptions=True
        )
        for conn, result in zip(targets, results, strict=False):
            if isinstance(result, BaseException):
                logger.debug("broadcast of %r to %r failed: %s", name, conn, result)

    async def broadcast_request(
        self,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        exclude: Iterable[Connection] | None = None,
    ) -> dict[Connection, Response | Exception]:
        """Send a request to every connected client and collect every answer.

        All clients are asked at once; a slow or silent one never holds up the others.

        Returns:
            For each client asked, its Response (ok or error) or the exception raised for it
            (`RequestTimeoutError`, `ConnectionClosedError`, ...).
        """
        targets = self._targets(exclude)
        results = await asyncio.gather(
            *(c.send_request(command, params, timeout=timeout) for c in targets),
            return_exceptions=True,
        )
        answers: dict[Connection, Response | Exception] = {}
        for conn, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation: do not swallow it
            answers[conn] = result
        return answers

    # Dispatch -------------------------------------------------------------------------------

    async def handle(self, connection: Connection, request: Request) -> Response:
        """Answer one request from any transport; never raises.

        The one dispatch path: 503 while stopping; a repeat of an id seen recently gets the
        first Response (at most once); then the typed route, else the catch-all handler, else
        404; handler errors are mapped by `call_request_handler`.
        """
        if self._stopping:
            return Response.fail(
                request.id, "unavailable: the server is shutting down", StatusCode.UNAVAILABLE
            )
        return await self.response_cache.run_once(
            (None, request.id), lambda: self._dispatch(connection, request)
        )

    async def _dispatch(self, connection: Connection, request: Request) -> Response:
        handler: Callable[..., Any] | None = self._routes.get(request.command)
        if handler is None:
            handler = self._request_handler
        if handler is None:
            return Response.fail(
                request.id,
                f"unknown command: {request.command!r}",
                StatusCode.UNKNOWN_COMMAND,
            )
        if self.handler_timeout is None:
            return await call_request_handler(handler, (connection, request), request)
        try:
            async with asyncio.timeout(self.handler_timeout):
                return await call_request_handler(handler, (connection, request), request)
        except TimeoutError:
            return Response.fail(
                request.id,
                f"timeout: {request.command!r} ran past {self.handler_timeout:g} s",
                StatusCode.TIMEOUT,
            )

    async def _deliver_event(self, connection: Connection, event: Event) -> None:
        for handler in self._event_handlers:
            await call_event_handler(handler, (connection, event), event.name)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # aiohttp handlers -----------------------------------------------------------------------

    @staticmethod
    def _remote(request: web.BaseRequest) -> tuple[str, int] | None:
        peername = request.transport.get_extra_info("peername") if request.transport else None
        if isinstance(peername, tuple) and len(peername) >= 2:
            return (str(peername[0]), int(peername[1]))
        return None

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat_interval,
            max_msg_size=self.max_message_size,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": "this endpoint speaks WebSocket; POST packets to " + self.general_path},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        if self._stopping:
            return web.json_response({"error": "the server is shutting down"}, status=503)
        await ws.prepare(request)
        connection = Connection(
            transport="websocket",
            remote_address=self._remote(request),
            headers=request.headers,
            request_timeout=self.request_timeout,
        )
        peer = Peer(
            ws,
            on_request=lambda req: self.handle(connection, req),
            on_event=lambda event: self._deliver_event(connection, event),
            max_in_flight=self.max_in_flight,
            label=f"connection #{connection.id}",
        )
        connection.peer = peer
        self._connections[connection] = None
        logger.debug("%r connected", connection)
        for handler in self._connect_handlers:
            # Beside the reader, not before it: a connect handler may await a request to the
            # client, whose Response only the reader can deliver.
            self._spawn(call_event_handler(handler, (connection,), "connect"))
        try:
            await peer.run()
        finally:
            del self._connections[connection]
            logger.debug("%r disconnected (code %s)", connection, peer.close_code)
            for handler in self._disconnect_handlers:
                await call_event_handler(handler, (connection,), "disconnect")
        return ws

    async def _general(self, request: web.Request) -> web.Response:
        # Counted against the same bound as the request tasks of WebSockets, for stop().
        task = asyncio.current_task()
        if task is not None:
            self._http_calls.add(task)
        try:
            return await self._general_inner(request)
        finally:
            if task is not None:
                self._http_calls.discard(task)

    @staticmethod
    def _packet_response(response: Response, status: int = 200) -> web.Response:
        return web.Response(body=encode_response(response), status=status, content_type=_JSON)

    async def _general_inner(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > self.max_message_size:
            return self._packet_response(
                Response.fail(
                    None,
                    f"too large: {request.content_length} bytes, the limit is "
                    f"{self.max_message_size}",
                    StatusCode.TOO_LARGE,
                ),
                413,
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._packet_response(
                Response.fail(
                    None,
                    f"too large: the limit is {self.max_message_size} bytes",
                    StatusCode.TOO_LARGE,
                ),
                413,
            )
        try:
            packet = parse_message(body)
        except ProtocolError as exc:
            return self._packet_response(Response.fail(exc.packet_id, str(exc), exc.code), 400)
        connection = Connection(
            transport="http",
            remote_address=self._remote(request),
            headers=request.headers,
            request_timeout=self.request_timeout,
        )
        if isinstance(packet, Request):
            return self._packet_response(await self.handle(connection, packet))
        if isinstance(packet, Event):
            await self._deliver_event(connection, packet)
        # An Event (or a Response, which nothing waits for over plain HTTP) is acknowledged.
        return self._packet_response(Response.success(packet.id))

    async def _about(self, request: web.Request) -> web.Response:
        body = {
            "protocol": PROTOCOL_VERSION,
            "version": __version__,
            "commands": [route.describe() for route in self._routes.values()],
        }
        return web.Response(body=orjson.dumps(body), content_type=_JSON)
