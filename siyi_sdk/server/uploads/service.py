"""`Uploads`: the upload endpoints of a ProtocolServer, put together, and their lifecycle.

It owns the parts (`UploadStore`, `Receiver`, `HttpEndpoints`, `WebSocketEndpoint`), adds
their routes to the server's application, and starts and stops them with it: the store's
threads and directory, the sweeper that removes expired uploads, the parts under way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiohttp import web

from ..auth import Gate
from ..dispatch import Dispatcher
from ..lifecycle import Lifecycle, ServerSettings
from .http_endpoints import HttpEndpoints
from .options import UploadOptions
from .receiver import Receiver
from .records import UploadHandler
from .store import UploadStore
from .ws_endpoint import WebSocketEndpoint

__all__ = ["Uploads"]

logger = logging.getLogger(__name__)


class Uploads(UploadOptions):
    """The upload endpoints of a ProtocolServer, and the files behind them.

    The server builds one (``server.uploads``) from its ``upload_dir``, ``max_upload_size``
    and ``upload_resume_ttl`` options; the attributes below tune the rest.

    Args:
        settings: the server's settings.
        gate: the server's authentication and sessions, which uploads share.
        dispatcher: the server's dispatcher (its middleware sees each completed upload).
        lifecycle: the server's lifecycle.
        directory: where files are stored (None: a temporary directory made on start and
            removed on stop).
        max_size: the largest upload accepted, in bytes (413 beyond).
        resume_ttl: seconds a partial upload waits to be resumed before it is removed.
        path: the endpoints' path.

    Attributes:
        busy_wait: seconds a second part of the same upload waits for the first to end
            before it is answered 429.
        idle_timeout: seconds without a byte after which a part is ended (its bytes are
            kept); also the bound on the wait for a WebSocket's digest frame.
        frame_limit: the largest WebSocket frame accepted.
        batch_size: bytes gathered before a write to disk.
        bytes_received: bytes written to partial uploads since the server started.
    """

    def __init__(
        self,
        settings: ServerSettings,
        gate: Gate,
        dispatcher: Dispatcher,
        lifecycle: Lifecycle,
        *,
        directory: str | os.PathLike[str] | None,
        max_size: int,
        resume_ttl: float,
        path: str,
    ) -> None:
        super().__init__(max_size=max_size, resume_ttl=resume_ttl, path=path)
        self._store = UploadStore(directory)
        self._receiver = Receiver(self, self._store, dispatcher, lifecycle)
        self._http = HttpEndpoints(self, gate, lifecycle, self._store, self._receiver)
        self._websocket = WebSocketEndpoint(self, settings, gate, lifecycle, self._receiver)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def directory(self) -> Path | None:
        """Where files are stored (None before the first start when none was configured)."""
        return self._store.directory

    @property
    def partial_directory(self) -> Path | None:
        """Where uploads in progress live: ``directory/.partial``."""
        return self._store.partial_directory

    @property
    def active(self) -> int:
        """Upload parts being received now."""
        return len(self._receiver.transports)

    def on_upload(self, handler: UploadHandler) -> UploadHandler:
        """Add a handler run after each successful upload; usable as a decorator."""
        self._receiver.handlers.append(handler)
        return handler

    def setup(self, app: web.Application, prefix: str = "") -> None:
        """Add the routes (under `prefix`), and the start/stop hooks, to an application."""
        path = prefix + self.path
        app.router.add_post(path, self._http.post, expect_handler=self._http.expect)
        app.router.add_get(path, self._websocket.handle)
        app.router.add_get(path + "/{upload_id}", self._http.status)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)

    # Lifecycle -------------------------------------------------------------------------------

    async def _startup(self, app: web.Application) -> None:
        await self._store.open()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _shutdown(self, app: web.Application) -> None:
        # Parts under way end now (their bytes are kept): an upload can be resumed later, and
        # stop() must not wait for a large file to finish.
        for transport in list(self._receiver.transports):
            transport.abort()

    async def _cleanup(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self._store.close()

    # Expiry ----------------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(self.resume_ttl / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except OSError as exc:
                logger.warning("sweeping partial uploads failed: %s", exc)

    async def sweep(self) -> None:
        """Remove partial uploads not resumed within `resume_ttl` (the sweeper calls this)."""
        await self._store.sweep(self.resume_ttl)
