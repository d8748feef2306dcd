"""HttpAdapter: each packet is one ``POST {base_url}/general``; receiving long-polls /events.

Why one module of a little over 400 lines: it is one class, whose sending, streaming (NDJSON),
withdrawing and polling all go through the same session, HTTP client and protocol check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from tenacity import RetryCallState

from ..calls import DEFAULT_WINDOW, cancel_packet, stamp
from ..errors import (
    ProtocolError,
    RequestTimeoutError,
    TransportError,
    error_for_response,
)
from ..instrument import instrument
from ..logs import bad_packet_extra, call_extra
from ..packets import (
    Event,
    Packet,
    Request,
    RequestPacket,
    Response,
    ResponsePacket,
    encode,
    parse_message,
    parse_object,
)
from ..retry import backoff
from ..wire import NDJSON, FileInfo
from .base import Adapter, AdapterMode, check_protocol
from .tls import SSLOption, certificate_error, client_session
from .upload import UploadTarget, run_upload
from .upload_source import UploadProgress, UploadSource

__all__ = ["HttpAdapter"]

logger = logging.getLogger(__name__)

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class HttpAdapter(Adapter):
    """Sends packets over HTTP: ``POST {base_url}/general``, one Response per call.

    One aiohttp session (a keep-alive connection pool) is opened by `start()` or on first
    use and closed by `close()`. Before its first packet it reads ``/about`` once and refuses a
    server of another protocol version. It presents the client's session key
    (``X-Siyi-Session``) and adopts the one the server returns, so that within an
    AdapterManager the server sees one peer whichever adapter carries a packet.

    With ``mode=AdapterMode.SEND | AdapterMode.RECEIVE`` it also receives: `start()` begins
    long-polling ``GET /events`` (PROTOCOL.md §7). Events go to the handlers (in order),
    requests from the server are answered through ``POST /general``, and each poll
    acknowledges what the previous one returned, so a lost answer loses nothing.

    Args:
        base_url: the server's base URL, e.g. ``http://127.0.0.1:8765`` or, over TLS,
            ``https://example.com:8765``.
        priority: preference within an AdapterManager (higher first).
        mode: SEND by default; add RECEIVE to long-poll for events and server requests.
        request_timeout: default seconds for one call (None: no limit).
        headers: extra HTTP headers for every call.
        token: the server's key, sent as ``Authorization: Bearer <token>``.
        general_path: the packet endpoint's path.
        events_path: the long-poll endpoint's path.
        about_path: the server description's path.
        poll_wait: seconds one long poll may wait on the server.
        reconnect_interval: first backoff delay after a failed poll.
        max_reconnect_interval: the backoff's ceiling.
        ssl: how an ``https://`` server's certificate is verified (also for uploads and
            polls): None for the system's default, an `ssl.SSLContext` (e.g. trusting your
            CA), or False for no verification (testing only). An untrusted certificate raises
            `CertificateError`, which polling does not retry.
        sleep: the coroutine used to wait between failed polls (inject one in tests).
    """

    mode = AdapterMode.SEND
    _call_transport = "http"

    def __init__(
        self,
        base_url: str,
        *,
        priority: int | None = None,
        mode: AdapterMode | None = None,
        request_timeout: float | None = 30.0,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        general_path: str = "/general",
        events_path: str = "/events",
        about_path: str = "/about",
        poll_wait: float = 25.0,
        reconnect_interval: float = 1.0,
        max_reconnect_interval: float = 30.0,
        ssl: SSLOption = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.ssl = ssl
        if priority is not None:
            self.priority = priority
        if mode is not None:
            self.mode = mode
        self.request_timeout = request_timeout
        self.headers = {**_HEADERS, **(headers or {})}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.url = self.base_url + general_path
        self.events_url = self.base_url + events_path
        self.about_url = self.base_url + about_path
        self.poll_wait = poll_wait
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        self._sleep = sleep
        self._http: aiohttp.ClientSession | None = None
        self._checked = False
        self._poller: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()
        self._withdrawing: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        """``HttpAdapter(<url>)``."""
        return f"{type(self).__name__}({self.url})"

    async def start(self) -> None:
        """Open the keep-alive session; with RECEIVE, start long-polling."""
        instrument(self)  # Tracing (and Metrics) when OpenTelemetry is configured
        if self._http is None or self._http.closed:
            self._http = client_session(self.ssl, headers=self.headers)
        if AdapterMode.RECEIVE in self.mode and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll_forever())
            self._poller.add_done_callback(self._poller_ended)

    def _poller_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: stopped receiving: %s", self.name, task.exception())

    async def close(self) -> None:
        """Stop polling; close the session and its connections.

        Requests withdrawn just before (``siyi.cancel`` on its way) are sent first.
        """
        if self._withdrawing:
            await asyncio.wait(self._withdrawing, timeout=1.0)
        tasks = [t for t in (self._poller, *self._answering) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _call(
        self, method: str, url: str, timeout: float | None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        """One HTTP exchange carrying the session key both ways."""
        if self._http is None or self._http.closed:
            self._http = client_session(self.ssl, headers=self.headers)
        try:
            async with self._http.request(
                method,
                url,
                data=body,
                headers=self.session.header(),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as reply:
                self.session.adopt(reply.headers, self.name)
                return reply.status, await reply.read()
        except TimeoutError:
            raise RequestTimeoutError(f"{method} {url}: no answer within {timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise certificate_error(exc, url) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc

    async def _check_protocol(self) -> None:
        status, body = await self._call("GET", self.about_url, self.request_timeout)
        if status == 200:
            try:
                about = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise TransportError(f"GET {self.about_url}: not JSON") from None
            check_protocol(about.get("protocol") if isinstance(about, dict) else None)
        self._checked = True

    async def _post(self, packet: Packet, timeout: float | None) -> Response:
        return await self._post_frame(encode(packet), timeout)

    async def _post_frame(self, frame: bytes, timeout: float | None) -> Response:
        if not self._checked:
            await self._check_protocol()
        status, body = await self._call("POST", self.url, timeout, frame)
        try:
            answer = parse_message(body)
        except ProtocolError as exc:
            # Not our server answering (a proxy's error page, a wrong URL): the route failed.
            raise TransportError(f"POST {self.url}: HTTP {status} with no packet ({exc})") from None
        if not isinstance(answer, Response):
            raise TransportError(f"POST {self.url}: HTTP {status} answered a {answer.type}")
        return answer

    async def send_packet(
        self, packet: RequestPacket, *, timeout: float | None = None
    ) -> ResponsePacket:
        """POST a Request and return the server's Response.

        Args:
            packet: the Request (its id is kept).
            timeout: seconds for the call; defaults to `request_timeout`.

        Raises:
            TransportError: the server could not be reached or did not answer with a packet
                (a `CertificateError` when its TLS certificate is not trusted).
            RequestTimeoutError: no answer in time (an `asyncio.TimeoutError`).
            ProtocolVersionError: the server speaks another protocol version.
        """
        timeout = stamp(packet, self.request_timeout if timeout is None else timeout)
        try:
            return await self._post(packet, timeout)
        except asyncio.CancelledError:
            self._withdraw(packet.id)
            raise

    def _withdraw(self, request_id: str) -> None:
        """POST ``siyi.cancel`` for a request whose caller gave up (§10), in the background.

        A request sent before the server gave this client a session key cannot be named to
        it: there is nothing to withdraw then (the server's deadline still bounds it).
        """
        if self.session.key is None:
            return
        _, cancel = cancel_packet(request_id)
        task = asyncio.get_running_loop().create_task(self._post_quietly(cancel))
        self._withdrawing.add(task)
        task.add_done_callback(self._withdrawing.discard)

    async def _post_quietly(self, frame: bytes) -> None:
        try:
            await self._post_frame(frame, self.request_timeout)
        except (TransportError, RequestTimeoutError) as exc:
            logger.info("%s: could not withdraw a request: %s", self.name, exc)

    async def stream_packet(
        self, packet: Request, *, window: int = DEFAULT_WINDOW, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """POST a Request asking for NDJSON (§10); yield the items as their lines arrive.

        TCP's flow control holds the server back while the loop does not read (`window` is
        for WebSockets). Leaving the loop early closes the connection and withdraws the
        request. See `Adapter.stream_packet`.
        """
        if not self._checked:
            await self._check_protocol()
        timeout = stamp(packet, timeout)
        if self._http is None or self._http.closed:
            self._http = client_session(self.ssl, headers=self.headers)
        finished = False
        try:
            async with self._http.post(
                self.url,
                data=encode(packet),
                headers={**self.session.header(), "Accept": NDJSON},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as reply:
                self.session.adopt(reply.headers, self.name)
                expected = 0
                async for line in reply.content:
                    if not line.strip():
                        continue
                    try:
                        answer = parse_message(line)
                    except ProtocolError as exc:
                        raise TransportError(
                            f"POST {self.url}: a line is no packet ({exc})"
                        ) from None
                    if isinstance(answer, Response):
                        finished = True
                        if not answer.ok:
                            raise error_for_response(answer)
                        return
                    chunk = answer.data if isinstance(answer, Event) else None
                    if not (isinstance(chunk, dict) and chunk.get("seq") == expected):
                        raise TransportError(f"POST {self.url}: chunk {expected} is missing")
                    expected += 1
                    yield chunk.get("data")
                raise TransportError(f"POST {self.url}: the stream ended without its Response")
        except TimeoutError:
            raise RequestTimeoutError(
                f"the stream of {packet.command!r} did not end within {timeout:g} s"
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise certificate_error(exc, self.url) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a line too long
            raise TransportError(f"POST {self.url} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if not finished:
                self._withdraw(packet.id)

    async def send_event(self, event: Event) -> None:
        """POST an Event; the server acknowledges it.

        Raises:
            TransportError: the server could not be reached.
            ApiError: the server refused the event (e.g. `UnauthorizedError`).
        """
        ack = await self._post(event, self.request_timeout)
        if not ack.ok:
            raise error_for_response(ack)

    async def upload(
        self,
        source: UploadSource,
        *,
        name: str | None = None,
        progress: UploadProgress | None = None,
        upload_id: str | None = None,
    ) -> FileInfo:
        """Upload a file with ``POST {base_url}/upload``, streaming the raw body.

        The digest travels in a header (``X-Siyi-File-MD5``), and headers precede the body:
        the file is therefore read twice, once to hash it and once to send it (the WebSocket
        channel of `ProtocolClient.upload` reads it once). It runs on a connection of its own.
        After a drop the upload resumes where the server stopped (``GET /upload/{id}``, then
        a ``Content-Range`` part), with backoff, `upload_attempts` times in all.

        Arguments, result and errors: as `Adapter.upload`.
        """

        def headers() -> dict[str, str]:
            found = {k: v for k, v in self.headers.items() if k.lower() != "content-type"}
            found.update(self.session.header())
            return found

        target = UploadTarget(
            label=f"{self.name} upload",
            url=self.base_url + self.upload_path,
            ws_url=None,
            headers=headers,
            session=self.session,
            sleep=self._sleep,
            reconnect_interval=self.reconnect_interval,
            max_reconnect_interval=self.max_reconnect_interval,
            attempts=self.upload_attempts,
            connect_timeout=self.request_timeout,
            answer_timeout=self.request_timeout,
            ssl=self.ssl,
        )
        return await run_upload(target, source, name=name, progress=progress, upload_id=upload_id)

    # Receiving -------------------------------------------------------------------------------

    def _log_failed_poll(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.info("%s: polling failed (%s); retrying in %.2f s", self.name, exc, delay)

    async def _poll(self, after: str | None, wait: float) -> list[Any]:
        # Always `after` (empty before anything was handled): a poll then consumes nothing
        # until the next one acknowledges it, so an answer lost on the way loses nothing.
        url = f"{self.events_url}?wait={wait:g}&after={quote(after or '', safe='')}"
        # The server may hold the poll for `wait` seconds: allow that on top of a call.
        limit = None if self.request_timeout is None else wait + self.request_timeout
        status, body = await self._call("GET", url, limit)
        if status != 200:
            try:
                answer: Packet | None = parse_message(body)
            except ProtocolError:
                answer = None
            if isinstance(answer, Response) and not answer.ok:
                raise error_for_response(answer)  # e.g. 401: retrying would not help
            raise TransportError(f"GET {self.events_url}: HTTP {status}")
        packets = orjson.loads(body)
        if not isinstance(packets, list):
            raise TransportError(f"GET {self.events_url}: not a JSON array")
        return packets

    async def _poll_forever(self) -> None:
        after: str | None = None
        polled = False
        while True:
            # Until a poll has come back with the session key, polls return at once: a long
            # one lost on the way would strand the client on a session it cannot name.
            wait = self.poll_wait if polled or self.session.key is not None else 0.0
            async for attempt in backoff(
                self.reconnect_interval,
                self.max_reconnect_interval,
                self._sleep,
                (TransportError, RequestTimeoutError, orjson.JSONDecodeError),
                self._log_failed_poll,
            ):
                with attempt:
                    if not self._checked:
                        await self._check_protocol()
                    packets = await self._poll(after, wait)
            polled = True
            for raw in packets:
                try:
                    packet = parse_object(raw)
                except ProtocolError as exc:
                    logger.warning(
                        "%s: a polled packet is invalid: %s",
                        self.name,
                        exc,
                        extra=bad_packet_extra(
                            exc.packet_id, exc.packet_type, self.session, "http"
                        ),
                    )
                    if exc.packet_id is not None:
                        after = exc.packet_id  # acknowledged: it must not come back forever
                    continue
                if isinstance(packet, Event):
                    await self.handle_event(packet)
                elif isinstance(packet, Request):
                    # Requests run concurrently, as on a WebSocket; events stay in order.
                    task = asyncio.create_task(self._answer(packet))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
                after = packet.id

    async def _answer(self, request: Request) -> None:
        response = await self.handle_request(request)
        try:
            await self._post(response, self.request_timeout)
        except (TransportError, RequestTimeoutError) as exc:
            logger.warning(
                "%s: the answer to %r was lost: %s",
                self.name,
                request.command,
                exc,
                extra=call_extra(request, self.session, "http"),
            )
