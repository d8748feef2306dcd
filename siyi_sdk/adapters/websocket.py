"""WebSocketAdapter: a self-reconnecting WebSocket to the server, SEND and RECEIVE.

The adapter's calls, its connection loop (reconnecting after a drop, with its state) and its
uploads' target. One connection attempt (the upgrade, the server's greeting) and the retries
with backoff are in `siyi_sdk.adapters.connecting`.

Why about 400 lines: the adapter's calls, its reconnecting loop and its uploads share the
connection state; what could stand alone (one attempt, the retries) is in `connecting`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from tenacity import RetryCallState

from ..calls import DEFAULT_WINDOW, Sink, requested_window
from ..errors import ConnectionClosedError, NotConnectedError
from ..frames import writable
from ..instrument import instrument
from ..packets import TAKEN_OVER, Event, Request, RequestPacket, ResponsePacket
from ..peer import Peer
from ..wire import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGE_SIZE, FileInfo
from .base import Adapter, AdapterMode
from .connecting import connect_retrying, open_websocket, read_greeting, upgrade_headers
from .tls import SSLOption, client_session
from .upload import UploadTarget, run_upload, upload_urls
from .upload_source import UploadProgress, UploadSource

__all__ = ["WebSocketAdapter"]

logger = logging.getLogger(__name__)


def _transport_of(ws: aiohttp.ClientWebSocketResponse) -> asyncio.WriteTransport | None:
    """The socket's transport, so the peer can write a burst of requests in one write.

    aiohttp keeps it on the connection a client WebSocket holds, which has no public name on
    the WebSocket; without it (another aiohttp), the peer sends through `send_frame`.
    """
    connection = getattr(ws, "_conn", None)
    return writable(getattr(connection, "transport", None))


class WebSocketAdapter(Adapter):
    """A WebSocket to the server that keeps itself connected.

    `start()` (or `async with`) makes the first connection attempt, bounded by
    `connect_timeout`, then keeps reconnecting in the background with exponential backoff and
    jitter starting at `reconnect_interval`. Requests sent while it is down fail at once with
    `NotConnectedError`; requests in flight when it drops fail at once with
    `ConnectionClosedError`.

    Args:
        url: the server's WebSocket URL, e.g. ``ws://127.0.0.1:8765`` or, over TLS,
            ``wss://example.com:8765``.
        priority: preference within an AdapterManager (higher first).
        mode: override SEND | RECEIVE.
        reconnect_interval: first backoff delay in seconds.
        max_reconnect_interval: the backoff's ceiling in seconds.
        request_timeout: default seconds to wait for a Response (None: no limit).
        connect_timeout: seconds one connection attempt may take.
        heartbeat_interval: seconds between the client's own pings (None: only answer the
            server's); a server that stops answering is dropped within 1.5 intervals.
        max_message_size: the largest frame accepted from the server.
        max_in_flight: server requests handled at once; more get 429.
        headers: extra HTTP headers for the upgrade request.
        token: the server's key, sent as ``Authorization: Bearer <token>``.
        ssl: how a ``wss://`` server's certificate is verified (also for uploads): None for
            the system's default, an `ssl.SSLContext` (e.g. trusting your CA), or False for
            no verification (testing only). An untrusted certificate raises
            `CertificateError`, which is not retried.
        sleep: the coroutine used to wait between attempts (inject a fast one in tests).
    """

    mode = AdapterMode.SEND | AdapterMode.RECEIVE
    _call_transport = "websocket"

    def __init__(
        self,
        url: str,
        *,
        priority: int | None = None,
        mode: AdapterMode | None = None,
        reconnect_interval: float = 1.0,
        max_reconnect_interval: float = 30.0,
        request_timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        heartbeat_interval: float | None = 30.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        ssl: SSLOption = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = url
        self.token = token
        self.ssl = ssl
        if priority is not None:
            self.priority = priority
        if mode is not None:
            self.mode = mode
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.heartbeat_interval = heartbeat_interval
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.headers = dict(headers or {})
        self._sleep = sleep
        self._peer: Peer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()
        self._closing = False
        self._last_error: BaseException | None = None

    @property
    def name(self) -> str:
        """``WebSocketAdapter(<url>)``."""
        return f"{type(self).__name__}({self.url})"

    @property
    def is_connected(self) -> bool:
        """True while a WebSocket to the server is open."""
        peer = self._peer
        return peer is not None and not peer.closed

    @property
    def is_available(self) -> bool:
        """Same as `is_connected`: a manager skips this adapter while it is down."""
        return self.is_connected

    @property
    def last_error(self) -> BaseException | None:
        """Why the last connection attempt failed or the connection dropped (None if up)."""
        if self.is_connected:
            return None
        return self._last_error or NotConnectedError(f"not connected to {self.url}")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the WebSocket is open.

        Raises:
            asyncio.TimeoutError: not connected within `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def send_packet(
        self, packet: RequestPacket, *, timeout: float | None = None
    ) -> ResponsePacket:
        """Send a Request over the WebSocket and wait for its Response.

        Args:
            packet: the Request (its id is kept).
            timeout: seconds to wait; defaults to `request_timeout`.

        Raises:
            NotConnectedError: not connected right now.
            ConnectionClosedError: the connection dropped before the Response came.
            RequestTimeoutError: no Response in time (an `asyncio.TimeoutError`).
        """
        peer = self._peer
        if peer is None:
            raise NotConnectedError(f"not connected to {self.url}")
        return await peer.request(packet, self.request_timeout if timeout is None else timeout)

    def stream_packet(
        self, packet: Request, *, window: int = DEFAULT_WINDOW, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Send a Request asking for a streamed answer; yield its items as they come (§10).

        At most `window` chunks are in flight; each consumed one is acknowledged. Leaving
        the loop early, or cancelling, withdraws the request (``siyi.cancel``): the server's
        generator is closed. See `Adapter.stream_packet`.

        Raises:
            NotConnectedError: not connected right now.
            ConnectionClosedError: the connection dropped before the stream ended.
        """
        peer = self._peer
        if peer is None:
            raise NotConnectedError(f"not connected to {self.url}")
        return peer.stream(packet, window, timeout)

    def chunk_sink(self, request: Request) -> Sink | None:
        """Chunks down this WebSocket when the server's request asked for a stream."""
        window = requested_window(request)
        peer = self._peer
        if window is None or peer is None:
            return None
        return Sink(peer.send_raw, window)

    async def send_event(self, event: Event) -> None:
        """Send an Event over the WebSocket.

        Raises:
            NotConnectedError: not connected right now.
            ConnectionClosedError: the connection dropped while sending.
        """
        peer = self._peer
        if peer is None:
            raise NotConnectedError(f"not connected to {self.url}")
        await peer.send(event)

    async def upload(
        self,
        source: UploadSource,
        *,
        name: str | None = None,
        progress: UploadProgress | None = None,
        upload_id: str | None = None,
    ) -> FileInfo:
        """Upload a file over a WebSocket of its own, ``ws(s)://host:port/upload``.

        The packet channel is not used (nor needed): requests keep flowing beside the upload.
        The file is read once, hashed (MD5) while it streams; the digest goes in a last text
        frame. After a drop the upload resumes where the server stopped (it is asked over
        HTTP, ``GET /upload/{id}``), with backoff, `upload_attempts` times in all.

        Arguments, result and errors: as `Adapter.upload`.
        """
        url, ws_url = upload_urls(self.url, self.upload_path)
        target = UploadTarget(
            label=f"{self.name} upload",
            url=url,
            ws_url=ws_url,
            headers=self._upgrade_headers,
            session=self.session,
            sleep=self._sleep,
            reconnect_interval=self.reconnect_interval,
            max_reconnect_interval=self.max_reconnect_interval,
            attempts=self.upload_attempts,
            connect_timeout=self.connect_timeout,
            answer_timeout=self.request_timeout,
            heartbeat=self.heartbeat_interval,
            ssl=self.ssl,
        )
        return await run_upload(target, source, name=name, progress=progress, upload_id=upload_id)

    async def start(self) -> None:
        """Make the first connection attempt, then keep reconnecting in the background.

        Returns after the first attempt, connected or not (`is_connected` tells which).
        """
        if self._runner is not None and not self._runner.done():
            return
        instrument(self)  # Tracing (and Metrics) when OpenTelemetry is configured
        self._closing = False
        self._attempted.clear()
        self._runner = asyncio.create_task(self._serve(auto_reconnect=True))
        # A runner that gives up (refused key, wrong protocol) has logged why and kept it in
        # `last_error`; its exception must not also surface as "never retrieved".
        self._runner.add_done_callback(lambda task: None if task.cancelled() else task.exception())
        waiter = asyncio.create_task(self._attempted.wait())
        await asyncio.wait(
            {waiter, self._runner},
            timeout=self.connect_timeout + 1.0,
            return_when=asyncio.FIRST_COMPLETED,
        )
        waiter.cancel()

    async def close(self) -> None:
        """Close the WebSocket (code 1000) and stop reconnecting. Idempotent."""
        self._closing = True
        peer = self._peer
        if peer is not None:
            await peer.close(1000)
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            if not runner.done():
                runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _upgrade_headers(self) -> dict[str, str]:
        return upgrade_headers(self.headers, self.token, self.session)

    async def _open(self) -> tuple[Peer, str | bytes | None]:
        """One connection attempt: the upgrade, then the server's `session` event.

        Returns:
            The peer, and the first frame when it was not a `session` event (a server that
            does not open sessions): the peer handles it before anything else.

        Raises:
            UnauthorizedError: the server refused the key (not retried).
            ForbiddenError: the session key belongs to another principal (not retried).
            CertificateError: the server's TLS certificate is not trusted (not retried).
            ProtocolVersionError: the server speaks another protocol (not retried).
        """
        if self._http is None or self._http.closed:
            self._http = client_session(self.ssl)
        async with asyncio.timeout(self.connect_timeout):
            ws = await open_websocket(
                self._http,
                self.url,
                headers=self._upgrade_headers(),
                max_message_size=self.max_message_size,
            )
            first = await read_greeting(ws, self.session, self.name)
        peer = Peer(
            ws,
            on_request=self.handle_request,
            on_event=self.handle_event,
            on_control=self.session.runs.control,
            max_in_flight=self.max_in_flight,
            label=self.url,
            max_message_size=self.max_message_size,
            transport=_transport_of(ws),
            masked=True,
            session=self.session,
            heartbeat=self.heartbeat_interval,
        )
        return peer, first

    def _log_retry(self, state: RetryCallState) -> None:
        self._attempted.set()
        exc = state.outcome.exception() if state.outcome else None
        self._last_error = exc
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.info(
            "connecting to %s failed (%s: %s); attempt %d, retrying in %.2f s",
            self.url,
            type(exc).__name__,
            exc,
            state.attempt_number,
            delay,
        )

    async def _connect_retrying(self) -> tuple[Peer, str | bytes | None]:
        return await connect_retrying(
            self._open,
            initial=self.reconnect_interval,
            maximum=self.max_reconnect_interval,
            sleep=self._sleep,
            on_retry=self._log_retry,
        )

    async def _serve(self, *, auto_reconnect: bool) -> None:
        """Connect; read until the connection drops; repeat while `auto_reconnect`."""
        peer: Peer | None = None
        try:
            while not self._closing:
                try:
                    peer, first = await (
                        self._connect_retrying() if auto_reconnect else self._open()
                    )
                except BaseException as exc:
                    if not isinstance(exc, asyncio.CancelledError):
                        self._last_error = exc
                        logger.error("%s: giving up: %s", self.name, exc)
                    raise
                finally:
                    self._attempted.set()
                if self._closing:
                    return
                self._peer = peer
                self._last_error = None
                self._connected.set()
                logger.info("connected to %s", self.url)
                opened = time.monotonic()
                try:
                    await peer.run(first)
                finally:
                    self._connected.clear()
                    self._peer = None
                if self._closing or not auto_reconnect:
                    return
                if peer.close_code == TAKEN_OVER:
                    self._last_error = ConnectionClosedError(
                        f"{self.url}: another connection took this session over"
                    )
                    logger.warning("%s: not reconnecting: %s", self.name, self._last_error)
                    return
                logger.warning("connection to %s lost (code %s)", self.url, peer.close_code)
                self._last_error = ConnectionClosedError(
                    f"the connection to {self.url} dropped (code {peer.close_code})"
                )
                if time.monotonic() - opened < self.reconnect_interval:
                    # A server that accepts then drops at once must not make us spin.
                    await self._sleep(self.reconnect_interval)
        finally:
            # However this ends (closed, connection over, cancelled from outside), leave no
            # socket or session open behind it.
            # Not `peer.closed`: that is already true once run() has returned, cancelled or
            # not, while the socket may still be open. Closing a closed socket is a no-op.
            if peer is not None:
                await asyncio.shield(peer.close(1000))
            if self._http is not None:
                http, self._http = self._http, None
                await asyncio.shield(http.close())
