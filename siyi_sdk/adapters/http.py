"""HttpAdapter: each packet is one ``POST {base_url}/general`` on a keep-alive session."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp

from ..errors import ProtocolError, RequestTimeoutError, TransportError, error_for_response
from ..packets import Event, Packet, RequestPacket, Response, ResponsePacket, encode, parse_message
from .base import Adapter, AdapterMode

__all__ = ["HttpAdapter"]

logger = logging.getLogger(__name__)

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class HttpAdapter(Adapter):
    """Sends packets over HTTP: ``POST {base_url}/general``, one Response per call.

    One aiohttp session (a keep-alive connection pool) is opened by `start()` or on first
    use and closed by `close()`.

    Args:
        base_url: the server's base URL, e.g. ``http://127.0.0.1:8765``.
        priority: preference within an AdapterManager (higher first).
        mode: override the default SEND.
        request_timeout: default seconds for one call (None: no limit).
        headers: extra HTTP headers for every call.
        general_path: the packet endpoint's path.
    """

    mode = AdapterMode.SEND

    def __init__(
        self,
        base_url: str,
        *,
        priority: int | None = None,
        mode: AdapterMode | None = None,
        request_timeout: float | None = 30.0,
        headers: Mapping[str, str] | None = None,
        general_path: str = "/general",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if priority is not None:
            self.priority = priority
        if mode is not None:
            self.mode = mode
        self.request_timeout = request_timeout
        self.headers = {**_HEADERS, **(headers or {})}
        self.url = self.base_url + general_path
        self._http: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        """``HttpAdapter(<url>)``."""
        return f"{type(self).__name__}({self.url})"

    async def start(self) -> None:
        """Open the keep-alive session."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers=self.headers)

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _post(self, packet: Packet, timeout: float | None) -> Response:
        if self._http is None or self._http.closed:
            await self.start()
        assert self._http is not None
        try:
            async with self._http.post(
                self.url, data=encode(packet), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as reply:
                status = reply.status
                body = await reply.read()
        except TimeoutError:
            raise RequestTimeoutError(f"POST {self.url}: no answer within {timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"POST {self.url} failed: {type(exc).__name__}: {exc}") from exc
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
            TransportError: the server could not be reached or did not answer with a packet.
            RequestTimeoutError: no answer in time (an `asyncio.TimeoutError`).
        """
        return await self._post(packet, self.request_timeout if timeout is None else timeout)

    async def send_event(self, event: Event) -> None:
        """POST an Event; the server acknowledges it.

        Raises:
            TransportError: the server could not be reached.
            ApiError: the server refused the event (e.g. `UnauthorizedError`).
        """
        ack = await self._post(event, self.request_timeout)
        if not ack.ok:
            raise error_for_response(ack)
