"""ProtocolServer: WebSocket at "/", POST /general and GET /about on one aiohttp port.

Every transport goes through one dispatch path, `handle(connection, request) -> Response`:
shutdown check, at-most-once cache, typed route or catch-all handler, error mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeAlias, TypeVar, overload

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .._version import __version__
from ..api.command import Command
from ..errors import (
    BackplaneUnavailableError,
    ConnectionClosedError,
    NotConnectedError,
    ProtocolError,
)
from ..packets import (
    PROTOCOL_VERSION,
    SESSION_EVENT,
    SESSION_HEADER,
    SUBPROTOCOL,
    TAKEN_OVER,
    Event,
    Request,
    Response,
    StatusCode,
    encode,
    kept,
    parse_message,
)
from ..peer import (
    DEFAULT_MAX_OUTBOX_BYTES,
    DEFAULT_MAX_PENDING_EVENTS,
    Peer,
    call_event_handler,
    call_request_handler,
    encode_response,
)
from ..wire import DEFAULT_MAX_MESSAGE_SIZE
from .backplane import Backplane, MemoryBackplane
from .connection import Connection
from .owners import same_owner
from .routing import Route
from .sessions import SessionRegistry, bounded_headers
from .state import MemoryResponseCache, ResponseCache
from .uploads import UploadHandler, Uploads

__all__ = ["ProtocolServer"]

logger = logging.getLogger(__name__)

ServerRequestHandler: TypeAlias = Callable[[Connection, Request], Awaitable[Response] | Response]
"""The catch-all request handler: ``handler(connection, request) -> Response``."""
ServerEventHandler: TypeAlias = Callable[[Connection, Event], Awaitable[None] | None]
"""An event handler: ``handler(connection, event)``."""
ConnectionHandler: TypeAlias = Callable[[Connection], Awaitable[None] | None]
"""A connect/disconnect/session-end handler: ``handler(connection)``."""
Authenticate: TypeAlias = Callable[[Mapping[str, str]], Any]
"""``authenticate(request_headers) -> principal | None`` (sync or async); None refuses."""

MAX_POLL_WAIT = 60.0
"""The longest wait of one ``GET /events`` poll, in seconds (PROTOCOL.md §7)."""

_URL_SECRETS = frozenset({"key", "token", "verify_key", "access_token", "authorization", "auth"})


class _Refused(Exception):
    """Authentication failed; carries the message of the 401."""


class _Caller(NamedTuple):
    """An authenticated caller: its principal and the session its key names (if live)."""

    principal: Any
    session: Connection | None


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
        max_pending_events: events read from one WebSocket and waiting for their handler, at
            most; at the bound the server stops reading that connection until the handler
            has caught up (TCP holds the sender back; nothing is dropped).
        max_outbox_bytes: bytes waiting to be written to one WebSocket (answers, packets, the
            socket's buffer), at most: above it the server reads no more requests from that
            peer until it reads, and a packet that would overflow it closes the connection
            with 1013 (the session stays resumable; the packet waits in its buffer).
        request_timeout: default seconds `send_request`/`broadcast_request` wait for a client.
        handler_timeout: seconds a handler may run before the request is answered 408
            (None: no limit).
        shutdown_timeout: seconds `stop()` lets running handlers finish.
        response_cache_ttl: seconds a Response is kept to answer a repeat of its request id.
        response_cache: the at-most-once cache (default: in memory, `response_cache_ttl`).
        response_cache_max_bytes: bytes of answers the in-memory at-most-once cache keeps,
            at most; past it the oldest are let go early and a repeat of their id gets 410
            (it never runs twice). A `RedisBackplane` keeps its answers in Redis instead.
        path: the WebSocket path.
        general_path: the path of the HTTP packet endpoint.
        about_path: the path of the server description.
        events_path: the path of the HTTP long-poll endpoint.
        verify_key: a shared key every client must send (``Authorization: Bearer <key>``).
        authenticate: ``authenticate(request_headers) -> principal | None``, sync or async;
            None refuses the client (401). With neither option the server is open.
        session_ttl: seconds a session with no WebSocket and no HTTP activity lives on.
        session_buffer: packets kept per session while its peer is away (oldest dropped).
        max_sessions: live sessions at most; past it the longest-idle detached one ends.
        upload_dir: where uploaded files are stored (PROTOCOL.md §8; see `Uploads`). None: a
            temporary directory created on start and removed on stop.
        max_upload_size: the largest upload accepted, in bytes (413 beyond).
        upload_resume_ttl: seconds a partial upload waits to be resumed before it is removed.
        upload_path: the path of the upload endpoints (POST, WebSocket, GET ``/{id}``).
        backplane: where sessions, buffers, the response cache and broadcasts live. The
            default, `MemoryBackplane`, keeps them in this process; give each of several
            server processes a `RedisBackplane` on one Redis to serve as one server.
        ssl: serve HTTPS and WSS on the port with this context (one holding the certificate
            chain and key, e.g. ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` then
            ``load_cert_chain``); None serves plain HTTP and WS. Kept as `ssl`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        heartbeat_interval: float | None = 30.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = 1000,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES,
        request_timeout: float | None = 30.0,
        handler_timeout: float | None = None,
        shutdown_timeout: float = 5.0,
        response_cache_ttl: float = 60.0,
        response_cache: ResponseCache | None = None,
        response_cache_max_bytes: int = 64 * 1024 * 1024,
        path: str = "/",
        general_path: str = "/general",
        about_path: str = "/about",
        events_path: str = "/events",
        verify_key: str | None = None,
        authenticate: Authenticate | None = None,
        session_ttl: float = 300.0,
        session_buffer: int = 1000,
        max_sessions: int = 10_000,
        upload_dir: str | os.PathLike[str] | None = None,
        max_upload_size: int = 100 * 1024 * 1024,
        upload_resume_ttl: float = 600.0,
        upload_path: str = "/upload",
        backplane: Backplane | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self.host = host
        # Public: what the server serves depends on it (e.g. `Secure` cookies under TLS).
        self.ssl = ssl
        self._port = port
        self.heartbeat_interval = heartbeat_interval
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.max_pending_events = max_pending_events
        self.max_outbox_bytes = max_outbox_bytes
        self.request_timeout = request_timeout
        self.handler_timeout = handler_timeout
        self.shutdown_timeout = shutdown_timeout
        self.path = path
        self.general_path = general_path
        self.about_path = about_path
        self.events_path = events_path
        self.verify_key = verify_key
        self.authenticate = authenticate
        self.backplane: Backplane = backplane if backplane is not None else MemoryBackplane()
        self.backplane.bind(self)
        self.sessions = SessionRegistry(
            ttl=session_ttl,
            max_sessions=max_sessions,
            buffer_size=session_buffer,
            request_timeout=request_timeout,
            on_end=self._session_ended,
            factory=self.backplane.session_factory(),
            on_retire=self._retired if self.backplane.shared else None,
        )
        # `is None`, not `or`: a cache defines __len__, so an empty one is falsy.
        self.response_cache = (
            response_cache
            if response_cache is not None
            else self.backplane.response_cache(response_cache_ttl)
        )
        if response_cache is None and isinstance(self.response_cache, MemoryResponseCache):
            self.response_cache.max_bytes = response_cache_max_bytes
        self._request_handler: ServerRequestHandler | None = None
        self._event_handlers: list[ServerEventHandler] = []
        self._connect_handlers: list[ConnectionHandler] = []
        self._disconnect_handlers: list[ConnectionHandler] = []
        self._session_end_handlers: list[ConnectionHandler] = []
        self._routes: dict[str, Route] = {}
        self._peers: set[Peer] = set()  # every open packet WebSocket, attached or replaying
        self._background: set[asyncio.Task[Any]] = set()
        self._http_calls: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._stopping_task: asyncio.Future[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._app: web.Application | None = None
        self.uploads = Uploads(
            self,
            directory=upload_dir,
            max_size=max_upload_size,
            resume_ttl=upload_resume_ttl,
            path=upload_path,
        )

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
        """Add a handler run when a WebSocket client's connection ends; usable as a decorator.

        It runs on every drop; the session (and its Connection) may live on and resume.
        """
        self._disconnect_handlers.append(handler)
        return handler

    def on_session_end(self, handler: ConnectionHandler) -> ConnectionHandler:
        """Add a handler run when a session ends; usable as a decorator.

        A session ends when its client disconnects cleanly, when it expires (`session_ttl`
        with no connection and no HTTP activity), when it is evicted past `max_sessions`, and
        when the server stops.
        """
        self._session_end_handlers.append(handler)
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
    def upload_dir(self) -> Path | None:
        """Where uploads are stored (a temporary directory's path once started, if not set)."""
        return self.uploads.directory

    @property
    def connections(self) -> list[Connection]:
        """The peers with a WebSocket open now."""
        return [c for c in self.sessions if c.is_connected]

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
            app.router.add_get(self.events_path, self._events)
            self.uploads.setup(app)
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
            await self.backplane.start()
            await web.TCPSite(runner, self.host, self._port, ssl_context=self.ssl).start()
        except BaseException:
            await runner.cleanup()
            await self.backplane.stop()
            raise
        self._runner = runner
        self._sweeper = asyncio.create_task(self._sweep_sessions())
        logger.info(
            "serving on %s://%s:%d%s", "wss" if self.ssl else "ws", self.host, self.port, self.path
        )

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
        if self._runner is None:
            return
        if self._stopping_task is None:
            self._stopping_task = asyncio.ensure_future(self._stop(self._runner))
        # Shielded: a caller that gives up waiting must not leave the server half stopped.
        await asyncio.shield(self._stopping_task)

    async def _stop(self, runner: web.AppRunner) -> None:
        self._stopping = True
        for session in self.sessions:
            session.wake()  # a long poll of /events is answered now, not held until cut off
        running = {t for peer in self._peers for t in peer.handling}
        running |= self._http_calls
        if running:
            await asyncio.wait(running, timeout=self.shutdown_timeout)
        # Stop listening before telling clients to go away: a client reconnects as soon as it
        # sees 1001, and a connection accepted while the runner cleans up is never served nor
        # closed (the client hangs until its connect timeout). Refused is the right answer.
        for site in list(runner.sites):
            await site.stop()
        await asyncio.gather(
            *(peer.close(1001, "server shutting down") for peer in list(self._peers)),
            return_exceptions=True,
        )
        await runner.cleanup()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.backplane.shared:
            # The sessions live on in the backplane: their clients resume on another node.
            self.sessions.forget_all()
        else:
            self.sessions.end_all()
        # What is left (connect and session-end handlers) gets the same grace as requests.
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.shutdown_timeout)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.backplane.stop()
        self._runner = None
        self._stopping_task = None
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

    async def find_session(self, key: str) -> Connection | None:
        """The Connection of a live session by its key, wherever its client is attached.

        With a shared backplane this finds sessions opened on other nodes too; `send_event`
        and `send_request` through the handle are routed to the node holding the client.
        """
        return await self.backplane.find_session(key)

    def local_targets(self, exclude: Iterable[str]) -> list[Connection]:
        """The sessions a broadcast reaches in this process (`exclude`: session keys).

        Attached peers, and with the in-memory backplane detached ones that take packets
        (they get them on return; a shared backplane buffers for those itself).
        """
        skip = set(exclude)
        away_too = not self.backplane.shared
        return [
            c
            for c in self.sessions
            if c.session not in skip and (c.is_connected or (away_too and c.receives))
        ]

    async def deliver_all(
        self, targets: Iterable[Connection], packet_id: str, frame: bytes
    ) -> None:
        """Deliver one encoded packet to each of `targets`, never waiting for a slow peer."""
        for connection in targets:
            # One after the other, no task per client (that doubled the time of a broadcast):
            # deliver() writes straight to the socket, or queues behind a peer that does not
            # read, or buffers for one that is away. It never waits for a peer.
            with contextlib.suppress(NotConnectedError):
                await connection.deliver(packet_id, frame)

    async def ask_all(
        self,
        targets: list[Connection],
        command: str,
        params: dict[str, Any] | None,
        timeout: float | None,
    ) -> list[Response | Exception]:
        """Send a request to each of `targets` at once; their answers (or errors), in order."""
        results = await asyncio.gather(
            *(c.send_request(command, params, timeout=timeout) for c in targets),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation: do not swallow it
        return results  # type: ignore[return-value]

    async def broadcast_event(
        self, name: str, data: Any = None, *, exclude: Iterable[Connection] | None = None
    ) -> None:
        """Send an event to every client except those in `exclude`.

        The event is encoded once. Clients that are away get it in their session's buffer.
        A client that does not read (its socket's buffer is full) never holds up the others.
        """
        event = Event(name=name, data=data)
        frame = kept(encode(event))  # one copy, shared by every buffer that keeps it
        skip = [c.session for c in exclude] if exclude else ()
        await self.backplane.broadcast_event(event.id, frame, skip)

    async def broadcast_request(
        self,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        exclude: Iterable[Connection] | None = None,
    ) -> dict[Connection, Response | Exception]:
        """Send a request to every client and collect every answer.

        All clients are asked at once; a slow or silent one never holds up the others.
        Clients that are away (sessions that take packets) get it on return, within `timeout`.

        Returns:
            For each client asked, its Response (ok or error) or the exception raised for it
            (`RequestTimeoutError`, `ConnectionClosedError`, ...).
        """
        skip = [c.session for c in exclude] if exclude else ()
        timeout = self.request_timeout if timeout is None else timeout
        return await self.backplane.broadcast_request(command, params, timeout, skip)

    # Dispatch -------------------------------------------------------------------------------

    async def handle(
        self, connection: Connection, request: Request, identity: str | None = None
    ) -> Response:
        """Answer one request from any transport; never raises.

        The one dispatch path: 503 while stopping; a repeat of an id seen recently gets the
        first Response (at most once); then the typed route, else the catch-all handler, else
        404; handler errors are mapped by `call_request_handler`.

        Args:
            connection: the peer asking.
            request: its Request.
            identity: the namespace of request ids for at-most-once: the session key when the
                peer presented one, None for the shared namespace.
        """
        if self._stopping:
            return Response.fail(
                request.id, "unavailable: the server is shutting down", StatusCode.UNAVAILABLE
            )
        return await self.response_cache.run_once(
            (identity, request.id), lambda: self._dispatch(connection, request)
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

    # Sessions and authentication -------------------------------------------------------------

    def _session_ended(self, connection: Connection) -> None:
        if self.backplane.shared:
            self._spawn(self.backplane.end_session(connection))
        self.session_ended(connection)

    def session_ended(self, connection: Connection) -> None:
        """Run the session-end handlers for `connection` (the backplane calls this too)."""
        for handler in self._session_end_handlers:
            self._spawn(call_event_handler(handler, (connection,), "session end"))

    def _retired(self, connection: Connection) -> None:
        # A shared backplane: this process forgets an idle handle; the session may live on.
        async def retire() -> None:
            if not await self.backplane.retire(connection):
                connection.end()
                self.session_ended(connection)

        self._spawn(retire())

    def _touch(self, session: Connection) -> None:
        self.sessions.touch(session)
        if self.backplane.shared:
            self._spawn(self.backplane.touch_session(session))

    def _on_response(self, session: Connection, response: Response) -> bool:
        # An answer to a request sent through this session: waited for here, or elsewhere.
        return session.resolve(response) or self.backplane.forward_response(session, response)

    async def _sweep_sessions(self) -> None:
        # Expiry needs a clock, not traffic: a detached session nobody touches must still go.
        while True:
            sessions = self.sessions
            await asyncio.sleep(
                max(0.05, min(sessions.ttl / 4, sessions.provisional_ttl / 4, 30.0))
            )
            sessions.sweep()

    @staticmethod
    def _bearer(request: web.BaseRequest) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        # Browsers cannot set headers on a WebSocket: they offer "bearer.<key>" instead.
        for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            offered = offered.strip()
            if offered.startswith("bearer."):
                return offered[len("bearer.") :]
        return None

    async def _authorize(self, request: web.BaseRequest) -> Any:
        """The principal of the caller, or `_Refused` (401)."""
        if self.verify_key is None and self.authenticate is None:
            return None
        if any(name.lower() in _URL_SECRETS for name in request.query) or (
            self.verify_key is not None and self.verify_key in request.query.values()
        ):
            raise _Refused("keys in the URL are refused: send 'Authorization: Bearer <key>'")
        token = self._bearer(request)
        if self.verify_key is not None:
            # compare_digest: the time taken says nothing about how much of the key matched.
            if token is None or not hmac.compare_digest(token.encode(), self.verify_key.encode()):
                raise _Refused("missing or wrong key")
            if self.authenticate is None:
                return True
        assert self.authenticate is not None
        headers: Mapping[str, str] = request.headers
        if token is not None and "Authorization" not in headers:
            headers = {**request.headers, "Authorization": f"Bearer {token}"}
        principal = self.authenticate(headers)
        if inspect.isawaitable(principal):
            principal = await principal
        if principal is None:
            raise _Refused("authentication failed")
        return principal

    async def _caller(self, request: web.BaseRequest) -> _Caller | web.Response:
        """Who is calling, and the session its key names; or the refusal to answer.

        401 for missing or wrong credentials; 403 for a session key that belongs to another
        principal (PROTOCOL.md §7): that call opens, resumes and reveals nothing. An unknown or
        expired key is no refusal: the caller gets a fresh session when one is opened.
        """
        try:
            principal = await self._authorize(request)
        except _Refused as exc:
            return self._refusal(401, StatusCode.UNAUTHORIZED, f"unauthorized: {exc}")
        key = request.headers.get(SESSION_HEADER)
        # With a shared backplane, also a session opened on another node.
        try:
            session = await self.backplane.find_session(key) if key else None
        except BackplaneUnavailableError as exc:
            return self._refusal(503, StatusCode.UNAVAILABLE, f"unavailable: {exc}")
        if session is not None and not same_owner(session.principal, principal):
            logger.warning(
                "refused a session key presented with other credentials (from %s)",
                self._remote(request),
            )
            return self._refusal(
                403, StatusCode.FORBIDDEN, "forbidden: this session belongs to another principal"
            )
        return _Caller(principal, session)

    async def _session_of(
        self, request: web.BaseRequest, caller: _Caller, *, provisional: bool = False
    ) -> tuple[Connection, bool] | web.Response:
        """The caller's session (found by its key, else newly opened) and whether it was found.

        Called only once the call is known to be accepted: a refused call opens nothing.

        Args:
            request: the call.
            caller: what `_caller` said of it.
            provisional: a session opened here is provisional (a one-off HTTP call, §7).
        """
        session = caller.session
        if session is not None:
            session.remote_address = self._remote(request)
            session.headers = bounded_headers(request.headers)
            if self.sessions.confirm(session) and self.backplane.shared:
                await self.backplane.save_session(session)  # its full lifetime, everywhere
            self._touch(session)
            return session, True
        try:
            session = self.sessions.open(
                caller.principal, self._remote(request), request.headers, provisional=provisional
            )
        except OverflowError as exc:
            return self._refusal(503, StatusCode.UNAVAILABLE, f"unavailable: {exc}")
        if self.backplane.shared:
            await self.backplane.save_session(session)
        return session, False

    @staticmethod
    def _refusal(status: int, code: int, message: str) -> web.Response:
        return web.Response(
            body=encode(Response.fail(None, message, code)), status=status, content_type=_JSON
        )

    async def _open_session(
        self, request: web.BaseRequest
    ) -> tuple[Connection, bool] | web.Response:
        """Authorize the caller and find or open its session; or the refusal to answer.

        A session opened here is provisional (§7): the endpoints that open a full session
        (the WebSocket, ``/events``) use `_caller` and `_session_of` themselves.
        """
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        return await self._session_of(request, caller, provisional=True)

    # aiohttp handlers -----------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat_interval,
            # aiohttp refuses a frame of exactly max_msg_size: the limit itself is allowed.
            max_msg_size=self.max_message_size + 1,
            autoping=True,
            protocols=(SUBPROTOCOL,),
        )
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {"error": "this endpoint speaks WebSocket; POST packets to " + self.general_path},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        if self._stopping:
            return self._refusal(503, StatusCode.UNAVAILABLE, "the server is shutting down")
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        opened = await self._session_of(request, caller)
        if isinstance(opened, web.Response):
            return opened
        session, resumed = opened
        await ws.prepare(request)
        peer = Peer(
            ws,
            on_request=lambda req: self.handle(session, req, session.session),
            on_event=lambda event: self._deliver_event(session, event),
            max_in_flight=self.max_in_flight,
            max_pending_events=self.max_pending_events,
            max_outbox_bytes=self.max_outbox_bytes,
            label=f"connection #{session.id}",
            on_response=lambda response: self._on_response(session, response),
            transport=request.transport,
            max_message_size=self.max_message_size,
        )
        self._peers.add(peer)
        previous = session.attach(peer)
        if previous is not None:
            logger.info("%r: a new WebSocket takes the session over", session)
            self._spawn(previous.close(TAKEN_OVER, "session taken over by another connection"))
        session.receives = True
        self._spawn(self._greet(session, peer, resumed))
        try:
            await peer.run()
        finally:
            self._peers.discard(peer)
            attached = session.detach(peer)
            if attached:
                self.sessions.touch(session)
                if self.backplane.shared:
                    await self.backplane.release(session)
            logger.debug("%r disconnected (code %s)", session, peer.close_code)
            if attached:
                for handler in self._disconnect_handlers:
                    await call_event_handler(handler, (session,), "disconnect")
            if peer.remote_close_code == 1000 and (attached or session.peer is None):
                # The client said goodbye: its session is over (a drop leaves it resumable).
                self.sessions.end(session)
        return ws

    async def _greet(self, session: Connection, peer: Peer, resumed: bool) -> None:
        # The session event first, then what waited in the buffer, then anything new.
        dropped = await self.backplane.claim(session)
        greeting = Event(
            name=SESSION_EVENT,
            data={
                "session": session.session,
                "protocol": PROTOCOL_VERSION,
                "heartbeat_interval": self.heartbeat_interval,
                "resumed": resumed,
                "dropped": dropped,
            },
        )
        try:
            await peer.send(greeting)
        except (NotConnectedError, ConnectionClosedError):
            return
        if not await session.replay(peer):
            return  # dropped while replaying: the rest stays buffered
        logger.debug("%r connected", session)
        for handler in self._connect_handlers:
            # Beside the reader, not before it: a connect handler may await a request to the
            # client, whose Response only the reader can deliver.
            self._spawn(call_event_handler(handler, (session,), "connect"))

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
    def _packet_response(
        response: Response, status: int = 200, session: Connection | None = None
    ) -> web.Response:
        headers = {SESSION_HEADER: session.session} if session is not None else None
        return web.Response(
            body=encode_response(response), status=status, content_type=_JSON, headers=headers
        )

    def _too_large(self, size: int | None = None) -> web.Response:
        said = f"{size} bytes, " if size is not None else ""
        return self._refusal(
            413,
            StatusCode.TOO_LARGE,
            f"too large: {said}the limit is {self.max_message_size} bytes",
        )

    async def _general_inner(self, request: web.Request) -> web.Response:
        # Everything that can refuse the call comes before its session: a refused call (401,
        # 403, 413, 400) opens none and answers no X-Siyi-Session (PROTOCOL.md §4).
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        limit = self.max_message_size
        if request.content_length is not None and request.content_length > limit:
            return self._too_large(request.content_length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except RequestPayloadError as exc:  # e.g. a gzip body that does not inflate
            return self._refusal(
                400, StatusCode.BAD_REQUEST, f"bad request: the body cannot be read: {exc}"
            )
        if len(body) > limit:
            return self._too_large(len(body))
        try:
            packet = parse_message(body)
        except ProtocolError as exc:
            return self._packet_response(Response.fail(exc.packet_id, str(exc), exc.code), 400)
        # Opened here, a session is provisional (§7) until its key is presented again.
        opened = await self._session_of(request, caller, provisional=True)
        if isinstance(opened, web.Response):
            return opened
        session, _ = opened
        if isinstance(packet, Request):
            # Ids are scoped by session only (§6): a caller without a key has a new session,
            # so two callers can never see each other's answers, whatever ids they pick.
            answer = await self.handle(session, packet, session.session)
            return self._packet_response(answer, 200, session)
        if isinstance(packet, Event):
            await self._deliver_event(session, packet)
        else:
            self._on_response(session, packet)  # the answer to a request sent via /events
        return self._packet_response(Response.success(packet.id), 200, session)

    async def _events(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        if isinstance(caller, web.Response):
            return caller
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            wait = math.nan
        if math.isnan(wait):
            return self._refusal(400, StatusCode.BAD_REQUEST, "bad request: 'wait' is seconds")
        wait = min(max(wait, 0.0), MAX_POLL_WAIT)
        opened = await self._session_of(request, caller)
        if isinstance(opened, web.Response):
            return opened
        session, _ = opened
        # An empty `after` acknowledges nothing yet: unlike no `after`, it consumes nothing.
        after = request.query.get("after")
        session.receives = True
        session.polls += 1  # a poll under way is activity: the session cannot expire
        try:
            frames = await session.take(after)
            if not frames and wait > 0 and not self._stopping:
                await session.wait_for_packets(wait)
                frames = await session.take(None if after is None else "")
        except BackplaneUnavailableError as exc:
            return self._refusal(503, StatusCode.UNAVAILABLE, f"unavailable: {exc}")
        finally:
            session.polls -= 1
            self._touch(session)
        return web.Response(
            body=b"[" + b",".join(frames) + b"]",
            content_type=_JSON,
            headers={SESSION_HEADER: session.session},
        )

    async def _about(self, request: web.Request) -> web.Response:
        body = {
            "protocol": PROTOCOL_VERSION,
            "version": __version__,
            "commands": [route.describe() for route in self._routes.values()],
        }
        return web.Response(body=orjson.dumps(body), content_type=_JSON)
