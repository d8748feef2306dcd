"""Serving a server: its routes on an aiohttp application, and that application's lifecycle.

`Serving` attaches the endpoints to any application (`attach`), starts and stops the
backplane and the sweepers with it (aiohttp's ``cleanup_ctx`` and ``on_shutdown``), and runs
an application of its own for `ProtocolServer.start()` / ``async with server:``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from ssl import SSLContext

from aiohttp import web

from .asyncapi import ASYNCAPI_PATH, AsyncApiEndpoint
from .backplane import Backplane
from .http_endpoints import HttpEndpoints
from .lifecycle import Lifecycle, ServerSettings
from .sessions import SessionRegistry
from .uploads import Uploads
from .ws_endpoint import WebSocketEndpoint

__all__ = ["Serving"]

logger = logging.getLogger(__name__)


class Serving:
    """The routes and the lifecycle of one server (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl: SSLContext | None,
        settings: ServerSettings,
        lifecycle: Lifecycle,
        sessions: SessionRegistry,
        backplane: Backplane,
        uploads: Uploads,
        websocket: WebSocketEndpoint,
        http: HttpEndpoints,
    ) -> None:
        self.host = host
        self._port = port
        self.ssl = ssl
        self.settings = settings
        self.lifecycle = lifecycle
        self.sessions = sessions
        self.backplane = backplane
        self.uploads = uploads
        self._websocket = websocket
        self._http = http
        self._runner: web.AppRunner | None = None
        self._app: web.Application | None = None
        self._serving = False
        self._stopped = asyncio.Event()
        self._stopping_task: asyncio.Future[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.extra_routes: list[
            tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
        ] = []
        """More GET routes ``(path, handler)`` served under the prefix (``metrics_path``)."""
        self.mounts: list[Callable[[web.Application, str], None]] = []
        """More parts that add their own routes (and lifecycle) under the prefix: ``mount(app,
        prefix)`` (the dashboard's)."""

    async def wait_stopped(self) -> None:
        """Return once the server has stopped."""
        await self._stopped.wait()

    def attach(self, app: web.Application, prefix: str = "") -> None:
        """See `ProtocolServer.attach`."""
        prefix = prefix.rstrip("/")
        settings = self.settings
        ws_path = prefix + settings.path
        app.router.add_get(ws_path, self._websocket.handle)
        if prefix and settings.path == "/":
            app.router.add_get(prefix, self._websocket.handle)  # ws://host/siyi as well as /siyi/
        app.router.add_post(prefix + settings.general_path, self._http.general)
        self._websocket.general_path = prefix + settings.general_path
        app.router.add_get(prefix + settings.about_path, self._http.about)
        asyncapi = AsyncApiEndpoint(settings, self._http.gate, self._http.dispatcher, prefix)
        app.router.add_get(prefix + ASYNCAPI_PATH, asyncapi.handle)
        app.router.add_get(prefix + settings.events_path, self._http.events)
        for path, handler in self.extra_routes:
            app.router.add_get(prefix + path, handler)
        for mount in self.mounts:
            mount(app, prefix)
        self.uploads.setup(app, prefix)
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._on_shutdown)

    def make_app(self) -> web.Application:
        """Build (once) an application serving only this server, at the root."""
        if self._app is None:
            self._app = web.Application()
            self.attach(self._app)
        return self._app

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self.lifecycle.stopping = False
        self._stopped.clear()
        await self.backplane.start()
        self._sweeper = asyncio.create_task(self._sweep_sessions())
        self._serving = True
        try:
            yield
        finally:
            self._serving = False
            await self._wind_down()

    async def _drain(self) -> None:
        """Stop taking work (new requests get 503) and let what runs finish, within the grace."""
        lifecycle = self.lifecycle
        lifecycle.stopping = True
        for session in self.sessions:
            session.wake()  # a long poll of /events is answered now, not held until cut off
        running = lifecycle.running_requests()
        if running:
            await asyncio.wait(running, timeout=self.settings.shutdown_timeout)

    async def _on_shutdown(self, app: web.Application) -> None:
        # The application's listening sockets are closed by now (with our own runner, the
        # work was drained before that): finish what runs, then say goodbye.
        lifecycle = self.lifecycle
        await self._drain()
        await asyncio.gather(
            *(peer.close(1001, "server shutting down") for peer in list(lifecycle.peers)),
            return_exceptions=True,
        )

    async def _wind_down(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.backplane.shared:
            # The sessions live on in the backplane: their clients resume on another node.
            self.sessions.forget_all()
        else:
            self.sessions.end_all()
        # What is left (connect and session-end handlers) gets the same grace as requests.
        background = self.lifecycle.background
        if background:
            await asyncio.wait(set(background), timeout=self.settings.shutdown_timeout)
        for task in list(background):
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self.backplane.stop()
        self._stopped.set()
        logger.info("server stopped")

    @property
    def port(self) -> int:
        """The bound port (the real one once started with ``port=0``)."""
        if self._runner is not None:
            for address in self._runner.addresses:
                if isinstance(address, tuple):
                    return int(address[1])
        return self._port

    @property
    def is_serving(self) -> bool:
        """True while the server (or the application it is attached to) serves."""
        return self._serving and not self.lifecycle.stopping

    async def start_serving(self) -> None:
        """See `ProtocolServer.start_serving`."""
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.settings.shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port, ssl_context=self.ssl).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        scheme = "wss" if self.ssl else "ws"
        logger.info("serving on %s://%s:%d%s", scheme, self.host, self.port, self.settings.path)

    async def stop(self) -> None:
        """See `ProtocolServer.stop`."""
        if self._runner is None:
            return
        if self._stopping_task is None:
            self._stopping_task = asyncio.ensure_future(self._stop(self._runner))
        # Shielded: a caller that gives up waiting must not leave the server half stopped.
        await asyncio.shield(self._stopping_task)

    async def _stop(self, runner: web.AppRunner) -> None:
        try:
            # Drained while still listening, so that a new caller hears 503 rather than a
            # refused connection; then the sites close, `_on_shutdown` says goodbye (1001)
            # and `_lifespan` ends the rest. A client reconnects as soon as it sees 1001: a
            # connection accepted while the runner cleans up would never be served.
            await self._drain()
            await runner.cleanup()
        finally:
            self._runner = None
            self._stopping_task = None

    async def _sweep_sessions(self) -> None:
        # Expiry needs a clock, not traffic: a detached session nobody touches must still go.
        while True:
            sessions = self.sessions
            await asyncio.sleep(
                max(0.05, min(sessions.ttl / 4, sessions.provisional_ttl / 4, 30.0))
            )
            sessions.sweep()
