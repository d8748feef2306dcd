"""ProtocolServer: the packet WebSocket, ``POST /general``, ``/events``, ``/about`` and uploads.

A small composition of parts with one job each (DESIGN.md): `Gate` (auth.py: who is calling,
which session is theirs), `Dispatcher` (dispatch.py: middleware, at-most-once, routes,
handlers), the transports (ws_endpoint.py, http_endpoints.py, uploads/: read, ask the gate,
hand packets to the dispatcher, write), `SessionRegistry`, the `Backplane`, `Broadcaster`,
`Registration` (the decorators) and `Serving` (routes on any aiohttp application, and its
lifecycle; `attach`, or `start()` / ``async with server:`` on an application of its own).

Why one module of about 440 lines: `ProtocolServer` itself only wires the parts above, but
its constructor takes and documents 33 keywords and it keeps the seed's methods
(`send_request`, `broadcast_event`, ...) as thin delegations; the documentation is the bulk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from ..instrument import instrument
from ..outcome import call_event_handler
from ..packets import Request, Response
from ..peer import DEFAULT_MAX_OUTBOX_BYTES, DEFAULT_MAX_PENDING_EVENTS
from ..wire import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_UPLOAD_SIZE
from .admin import Dashboard
from .auth import Authenticate, Gate
from .backplane import Backplane, MemoryBackplane
from .broadcast import Broadcaster
from .connection import Connection
from .dispatch import (
    Dispatcher,
)
from .http_endpoints import HttpEndpoints
from .lifecycle import Lifecycle, ServerSettings, Setting
from .prometheus import PrometheusEndpoint
from .registration import Registration
from .serving import Serving
from .sessions import SessionRegistry
from .state import MemoryResponseCache, ResponseCache
from .uploads import Uploads
from .ws_endpoint import WebSocketEndpoint

__all__ = ["ProtocolServer"]

logger = logging.getLogger(__name__)


class ProtocolServer(Registration):
    """A server speaking the siyi protocol to WebSocket and HTTP clients on one port.

    Register handlers, then either ``await server.start()`` (serves until `stop()`),
    ``async with server:`` (serves in the background inside the block), or
    ``server.attach(app, prefix="/siyi")`` to serve from an aiohttp application of your own.

    Args:
        host: the interface to bind.
        port: the TCP port; 0 picks a free one (read it back from `port` once started).
        heartbeat_interval: seconds between pings to each WebSocket; one that does not answer
            within half an interval is closed. None turns the heartbeat off.
        max_message_size: the largest packet accepted, in bytes, on every transport (exactly
            the limit is accepted): a larger frame closes its WebSocket with 1009, a larger
            ``/general`` body gets 413.
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
        shutdown_timeout: seconds a stop lets running handlers finish.
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
        max_sessions: live sessions at most; past it a provisional session ends first, then
            the longest-idle detached one.
        upload_dir: where uploaded files are stored (PROTOCOL.md §8; see `Uploads`). None: a
            temporary directory created on start and removed on stop.
        max_upload_size: the largest upload accepted, in bytes (413 beyond).
        upload_resume_ttl: seconds a partial upload waits to be resumed before it is removed.
        upload_path: the path of the upload endpoints (POST, WebSocket, GET ``/{id}``).
        backplane: where sessions, buffers, the response cache and broadcasts live. The
            default, `MemoryBackplane`, keeps them in this process; give each of several
            server processes a `RedisBackplane` on one Redis to serve as one server.
        ssl: serve HTTPS and WSS with this context (holding the certificate chain and key,
            e.g. ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` then
            ``load_cert_chain``); None serves plain HTTP and WS.
        metrics_path: serve the server's metrics (`siyi_sdk.metrics.Metrics`, installed on
            it here, first in its middleware chain) in the Prometheus text format at this
            path, e.g. ``"/metrics"``; needs the ``prometheus`` extra. None: not served.
        metrics_key: a key a scrape of `metrics_path` must present as
            ``Authorization: Bearer <key>`` (else 401); None: the metrics are open.
        admin_path: where the live dashboard is served (README's "Dashboard"), under the
            mount prefix: the page, its feed and ``{admin_path}/api/stats``.
        admin_key: the dashboard's read-only key (at least 8 characters). The dashboard is
            off unless this or `admin_operator_key` is given.
        admin_operator_key: the dashboard's operator key: the only role that may act
            (disconnect or end a session, send it an event, broadcast, trace).
    """

    heartbeat_interval = Setting[float | None]()
    max_message_size = Setting[int]()
    max_in_flight = Setting[int]()
    max_pending_events = Setting[int]()
    max_outbox_bytes = Setting[int]()
    request_timeout = Setting[float | None]()
    handler_timeout = Setting[float | None]()
    shutdown_timeout = Setting[float]()
    path = Setting[str]()
    general_path = Setting[str]()
    about_path = Setting[str]()
    events_path = Setting[str]()

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        heartbeat_interval: float | None = 30.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
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
        max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE,
        upload_resume_ttl: float = 600.0,
        upload_path: str = "/upload",
        backplane: Backplane | None = None,
        ssl: SSLContext | None = None,
        metrics_path: str | None = None,
        metrics_key: str | None = None,
        admin_path: str = "/admin",
        admin_key: str | None = None,
        admin_operator_key: str | None = None,
    ) -> None:
        self.host = host
        self.ssl = ssl
        """The TLS context served with, None for plain HTTP and WS."""
        self.settings = ServerSettings(
            heartbeat_interval=heartbeat_interval,
            max_message_size=max_message_size,
            max_in_flight=max_in_flight,
            max_pending_events=max_pending_events,
            max_outbox_bytes=max_outbox_bytes,
            request_timeout=request_timeout,
            handler_timeout=handler_timeout,
            shutdown_timeout=shutdown_timeout,
            path=path,
            general_path=general_path,
            about_path=about_path,
            events_path=events_path,
        )
        self.lifecycle = Lifecycle()
        self.backplane: Backplane = backplane if backplane is not None else MemoryBackplane()
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
        self.dispatcher = Dispatcher(self.settings, self.response_cache, self.lifecycle)
        self.sessions.chain = self.dispatcher.chain  # what the server sends passes it too
        self.sessions.stats = self.lifecycle.stats
        self.gate = Gate(
            verify_key=verify_key,
            authenticate=authenticate,
            sessions=self.sessions,
            backplane=self.backplane,
            lifecycle=self.lifecycle,
        )
        self.broadcaster = Broadcaster(
            self.sessions, self.backplane, self.dispatcher, self.session_ended
        )
        self.backplane.bind(self.broadcaster)
        self.uploads = Uploads(
            self.settings,
            self.gate,
            self.dispatcher,
            self.lifecycle,
            directory=upload_dir,
            max_size=max_upload_size,
            resume_ttl=upload_resume_ttl,
            path=upload_path,
        )
        self._serving = Serving(
            host=host,
            port=port,
            ssl=ssl,
            settings=self.settings,
            lifecycle=self.lifecycle,
            sessions=self.sessions,
            backplane=self.backplane,
            uploads=self.uploads,
            websocket=WebSocketEndpoint(
                self.settings, self.gate, self.dispatcher, self.backplane, self.lifecycle
            ),
            http=HttpEndpoints(self.settings, self.gate, self.dispatcher, self.lifecycle),
        )
        self.metrics_endpoint: PrometheusEndpoint | None = None
        """What serves `metrics_path` (its `registry`, its `meter_provider`), if set."""
        if metrics_key is not None and metrics_path is None:
            raise ValueError("metrics_key guards metrics_path: give metrics_path too")
        if metrics_path is not None:
            self.metrics_endpoint = PrometheusEndpoint(self, metrics_key)
            self._serving.extra_routes.append((metrics_path, self.metrics_endpoint.handle))
        self.dashboard: Dashboard | None = None
        """The live dashboard, when a key for it was given (`admin_key`, `admin_operator_key`)."""
        if admin_key is not None or admin_operator_key is not None:
            self.dashboard = Dashboard(self, admin_path, admin_key, admin_operator_key)
            self._serving.mounts.append(self.dashboard.mount)

    @property
    def verify_key(self) -> str | None:
        """The shared key clients must present, if any."""
        return self.gate.verify_key

    @property
    def authenticate(self) -> Authenticate | None:
        """The authentication callback, if any."""
        return self.gate.authenticate

    # Serving -------------------------------------------------------------------------------

    def attach(self, app: web.Application, prefix: str = "") -> None:
        """Serve this server's routes from `app`, under `prefix`, with `app`'s lifecycle.

        The routes (WebSocket, ``/general``, ``/events``, ``/about``, uploads) are added
        under `prefix`; the backplane, the session sweeper and the upload sweeper start
        with `app` (its ``cleanup_ctx``) and stop with it, closing every WebSocket with 1001.
        So ``web.run_app(app)`` or an `AppRunner` of your own is all it takes.

        Args:
            app: the application, not yet started.
            prefix: a path prefix such as ``"/siyi"`` (``""``: at the root).
        """
        self._serving.attach(app, prefix)
        app.on_startup.append(self._instrument)

    async def _instrument(self, app: web.Application) -> None:
        # At the application's startup, not at attach(): OpenTelemetry may be set up between.
        instrument(self)

    def make_app(self) -> web.Application:
        """Build (once) an application serving only this server, at the root."""
        app = self._serving.make_app()
        if self._instrument not in app.on_startup:
            app.on_startup.append(self._instrument)
        return app

    @property
    def port(self) -> int:
        """The bound port (the real one once started with ``port=0``)."""
        return self._serving.port

    @property
    def is_serving(self) -> bool:
        """True while the server (or the application it is attached to) serves."""
        return self._serving.is_serving

    @property
    def upload_dir(self) -> Path | None:
        """Where uploads are stored (a temporary directory's path once started, if not set)."""
        return self.uploads.directory

    @property
    def connections(self) -> list[Connection]:
        """The peers with a WebSocket open now."""
        return [c for c in self.sessions if c.is_connected]

    async def start_serving(self) -> None:
        """Bind and serve in the background; returns once the port is open.

        Raises:
            OSError: the address cannot be bound.
        """
        instrument(self)  # Tracing (and Metrics) when OpenTelemetry is configured
        await self._serving.start_serving()

    async def start(self) -> None:
        """Start serving and keep serving until `stop()` is called (long-running)."""
        await self.start_serving()
        await self._serving.wait_stopped()

    async def stop(self) -> None:
        """Stop gracefully. Idempotent.

        New requests are answered 503 at once; running handlers get `shutdown_timeout`
        seconds to finish and send their Responses; then the port closes, every WebSocket
        is closed with 1001 (going away) and the sessions end.
        """
        await self._serving.stop()

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

    # Sessions --------------------------------------------------------------------------------

    def _session_ended(self, connection: Connection) -> None:
        self.lifecycle.stats.dropped += connection.dropped  # its drops outlive it in the count
        if self.backplane.shared:
            connection.ending = self.lifecycle.spawn(self.backplane.end_session(connection))
        self.session_ended(connection)

    def session_ended(self, connection: Connection) -> None:
        """Run the session-end handlers for `connection` (the backplane calls this too)."""
        for handler in self.dispatcher.session_end_handlers:
            self.lifecycle.spawn(call_event_handler(handler, (connection,), "session end"))

    def _retired(self, connection: Connection) -> None:
        # A shared backplane: this process forgets an idle handle; the session may live on.
        async def retire() -> None:
            if not await self.backplane.retire(connection):
                connection.end()
                self.session_ended(connection)

        self.lifecycle.spawn(retire())

    # Sending ---------------------------------------------------------------------------------

    async def send_request(
        self,
        connection: Connection,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Response:
        """Send a request to one client and wait for its Response.

        Raises:
            NotConnectedError: the session has ended.
            ConnectionClosedError: its WebSocket dropped before answering.
            RequestTimeoutError: no answer in time (an `asyncio.TimeoutError`).
        """
        return await connection.send_request(command, params, timeout=timeout)

    async def send_event(self, connection: Connection, name: str, data: Any = None) -> None:
        """Send an event to one client (buffered while it is away).

        Raises:
            NotConnectedError: the session has ended.
        """
        await connection.send_event(name, data)

    async def find_session(self, key: str) -> Connection | None:
        """The Connection of a live session by its key, wherever its client is attached.

        With a shared backplane this finds sessions opened on other nodes too; `send_event`
        and `send_request` through the handle are routed to the node holding the client.
        """
        return await self.backplane.find_session(key)

    async def broadcast_event(
        self, name: str, data: Any = None, *, exclude: Iterable[Connection] | None = None
    ) -> None:
        """Send an event to every client except those in `exclude`.

        The event is encoded once. Clients that are away get it in their session's buffer.
        A client that does not read never holds up the others.
        """
        await self.broadcaster.broadcast_event(name, data, exclude)

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
        timeout = self.settings.request_timeout if timeout is None else timeout
        return await self.broadcaster.broadcast_request(command, params, timeout, exclude)

    async def handle(self, connection: Connection, request: Request) -> Response:
        """Answer one request as if it had arrived over HTTP (the whole pipeline); never raises."""
        return await self.dispatcher.handle(connection, request, "http")
